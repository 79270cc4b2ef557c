"""ControlNet (depth) loading, offline: a diffusers folder or a single original-layout file.

Single files (`control_v11f1p_sd15_depth.safetensors`, or a `.pth` read through
`torch.load(weights_only=True)`, never a plain unpickle) are converted by diffusers'
`convert_controlnet_checkpoint` against the config shipped in `configs/controlnet_sd15`
(the public lllyasviel/control_v11f1p_sd15_depth values) or a given folder's config.json.
`controlnet_to_ldm` is the inverse (diffusers -> original `control_model.*` names); the
UNet part reuses `ldm_layout.unet_rules`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from diffusers.models.model_loading_utils import load_state_dict

from .atomic import atomic_save_safetensors
from .ldm_layout import Rules, _apply, unet_rules
from .weightfile import read_safetensors

logger = logging.getLogger(__name__)

CONTROLNET_CONFIG_DIR = Path(__file__).parent / "configs" / "controlnet_sd15"
CONTROLNET_PREFIX = "control_model."
CONTROLNET_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")
WHERE_TO_GET = (
    "put a depth ControlNet there, e.g. control_v11f1p_sd15_depth.pth from "
    "https://huggingface.co/lllyasviel/ControlNet-v1-1 or its .safetensors conversion "
    "(ComfyUI keeps them in models/controlnet), or a diffusers ControlNet folder"
)


def load_controlnet(
    source: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    config: str | os.PathLike | None = None,
) -> ControlNetModel:
    """A frozen ControlNetModel (eval, no grad, on `device` in `dtype`) from a diffusers
    folder (config.json + diffusion_pytorch_model.safetensors) or a single file.

    `config` (single files only): a folder with config.json; default the bundled SD 1.5 one.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if config is not None:
            raise ValueError(f"config={config!r} applies to single-file ControlNets only, not to the folder {path}")
        model = _load_folder(path, dtype)
    elif path.is_file():
        model = _load_single_file(path, dtype, Path(config) if config is not None else CONTROLNET_CONFIG_DIR)
    else:
        raise FileNotFoundError(f"ControlNet not found: {path} does not exist; {WHERE_TO_GET}")
    model.requires_grad_(False).eval().to(device)
    if model.dtype != dtype:
        model.to(dtype)
    return model


def _load_folder(path: Path, dtype: torch.dtype) -> ControlNetModel:
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{path / name} is missing: a diffusers ControlNet folder holds config.json and "
                "diffusion_pytorch_model.safetensors (save_pretrained(..., safe_serialization=True)); "
                "for a single-file ControlNet pass the file itself"
            )
    return ControlNetModel.from_pretrained(path, torch_dtype=dtype, local_files_only=True, use_safetensors=True)


def _load_single_file(path: Path, dtype: torch.dtype, config_dir: Path) -> ControlNetModel:
    if path.suffix.lower() not in CONTROLNET_SUFFIXES:
        raise ValueError(f"{path}: unsupported ControlNet file type {path.suffix!r}; expected {CONTROLNET_SUFFIXES}")
    config_file = config_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"ControlNet config {config_file} is missing: pass a folder holding a diffusers config.json"
        )
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if path.suffix.lower() == ".safetensors":
        state, header = read_safetensors(
            path, what="ControlNet", fix="it is probably a partial download or copy: download it again"
        )
    else:
        state, header = _load_tensors_only(path), {}
    _refuse_control_lora(path, state, header)
    converted = {k: v for k, v in convert_controlnet_checkpoint(state, config).items() if v is not None}
    with torch.device("meta"):
        model = ControlNetModel.from_config(config)
    expected = model.state_dict()
    missing = sorted(expected.keys() - converted.keys())
    unexpected = sorted(converted.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & converted.keys() if expected[k].shape != converted[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not match the ControlNet config {config_file}: {len(missing)} weights missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(wrong)} of another "
            f"shape (e.g. {wrong[:3]}); is it an SD 1.x ControlNet? Otherwise pass config= its diffusers folder"
        )
    model.load_state_dict(converted, strict=True, assign=True)
    logger.info("loaded ControlNet %s (%d tensors, config %s)", path, len(converted), config_dir)
    return model


def _load_tensors_only(path: Path) -> dict:
    """The state dict of a .pth/.pt/.ckpt through torch.load(weights_only=True), unwrapped."""
    try:
        state = load_state_dict(str(path))
    except Exception as error:  # diffusers wraps the weights-only refusal in a generic error
        raise ValueError(
            f"{path} cannot be read as plain tensors ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "a .pth is only read with torch.load(weights_only=True): convert it to .safetensors"
        ) from error
    while isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return state


def _refuse_control_lora(path: Path, state: Mapping[str, Any], header: Mapping[str, str]) -> None:
    """Refuse a control-LoRA (Stability AI's rank-reduced ControlNet, kept in the same folder
    as ControlNets by ComfyUI): it holds low-rank `.up`/`.down` differences to a base UNet."""
    marker = "lora_controlnet" in state or "lora_controlnet" in header
    pairs = sum(1 for key in state if key.endswith(".up") and key.removesuffix(".up") + ".down" in state)
    if not marker and not pairs:
        return
    evidence = ", ".join(
        ([f"{pairs} low-rank .up/.down weight pairs"] if pairs else []) + (["a 'lora_controlnet' entry"] if marker else [])
    )
    raise ValueError(
        f"{path} is a control-LoRA ({evidence}), not a full ControlNet: it stores only low-rank changes to a "
        f"base model's UNet and cannot be used as the depth ControlNet. A full SD 1.x depth ControlNet is "
        f"needed: {WHERE_TO_GET}"
    )


def controlnet_rules(config: Mapping[str, Any]) -> Rules:
    """diffusers -> original prefixes for a ControlNetModel: the UNet encoder half, the
    hint encoder (`input_hint_block`), zero convs and the middle-block output."""
    rules = unet_rules({**config, "up_block_types": []})
    channels = list(config["conditioning_embedding_out_channels"])
    hint_blocks = 2 * (len(channels) - 1)
    rules["controlnet_cond_embedding.conv_in."] = ("input_hint_block.0.", {})
    for i in range(hint_blocks):
        rules[f"controlnet_cond_embedding.blocks.{i}."] = (f"input_hint_block.{2 * (i + 1)}.", {})
    rules["controlnet_cond_embedding.conv_out."] = (f"input_hint_block.{2 * (hint_blocks + 1)}.", {})
    layers = config["layers_per_block"]
    per_block = [layers] * len(config["down_block_types"]) if isinstance(layers, int) else list(layers)
    zero_convs = 1 + sum(per_block) + len(per_block) - 1
    for i in range(zero_convs):
        rules[f"controlnet_down_blocks.{i}."] = (f"zero_convs.{i}.0.", {})
    rules["controlnet_mid_block."] = ("middle_block_out.0.", {})
    return rules


def controlnet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """ControlNetModel state dict -> original names with the `control_model.` prefix."""
    return {CONTROLNET_PREFIX + k: v for k, v in _apply(state_dict, controlnet_rules(config), "ControlNet").items()}


def save_controlnet_single_file(controlnet: ControlNetModel, path: str | os.PathLike) -> None:
    """Write an original-layout ControlNet .safetensors atomically (the modules' dtype)."""
    tensors = controlnet_to_ldm(controlnet.state_dict(), controlnet.config)
    atomic_save_safetensors(tensors, path)
    logger.info("wrote single-file ControlNet %s (%d tensors)", path, len(tensors))


def build_tiny_controlnet(unet: UNet2DConditionModel, seed: int = 0) -> ControlNetModel:
    """A ControlNet copied from `unet` (e.g. the tiny one) whose zero convolutions get small
    random weights (std 0.02, fixed by `seed`), so the depth map visibly steers generation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        controlnet = ControlNetModel.from_unet(unet)
        for module in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            torch.nn.init.normal_(module.weight, std=0.02)
    controlnet.requires_grad_(False).eval().to(unet.device)
    if controlnet.dtype != unet.dtype:  # diffusers warns on every dtype cast, so cast only when needed
        controlnet.to(unet.dtype)
    return controlnet


DEFAULT_CONTROLNET = "default"


def default_controlnet(bundle) -> ControlNetModel:
    """The depth ControlNet that goes with an embedded model: the shipped bias-lab world
    ControlNet for "default", a seeded tiny one for "tiny"."""
    from .assets import CONTROLNET_DIR
    from .models import DEFAULT_MODEL, TINY_MODEL

    if bundle.source == TINY_MODEL:
        return build_tiny_controlnet(bundle.unet, seed=0)
    if bundle.source != DEFAULT_MODEL:
        raise ValueError(
            f"the '{DEFAULT_CONTROLNET}' ControlNet belongs to the embedded default model, not to {bundle.source}; "
            f"pick a depth ControlNet for it ({WHERE_TO_GET})"
        )
    return load_controlnet(CONTROLNET_DIR, dtype=bundle.dtype, device=bundle.device)
