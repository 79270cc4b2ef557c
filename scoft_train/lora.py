"""LoRA adapters on the UNet (and optionally CLIP text encoder) attention projections:
add, checkpoint, export for ComfyUI.

In memory the adapter is a peft LoRA named `ADAPTER_NAME`. Checkpoints keep the peft
state dict; the deliverable is a kohya-format `.safetensors` that ComfyUI's LoraLoader
and diffusers' `load_lora_weights` both read: `lora_unet_<diffusers UNet path>` and, for
the text encoder, `lora_te_text_model_<CLIP path>` (the names ComfyUI's
`model_lora_keys_clip` maps for SD 1.x; transformers >= 5.6 dropped the `text_model.`
level from CLIPTextModel paths, so it is added back explicitly).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors import safe_open

from .atomic import atomic_save_safetensors

logger = logging.getLogger(__name__)

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
ADAPTER_NAME = "scoft"
KOHYA_PREFIX = "lora_unet_"
KOHYA_TE_PREFIX = "lora_te_"
FORMAT_VERSION = "1"
INIT_MODES = {"gaussian": "gaussian", "kaiming": True}


def add_lora(
    model: torch.nn.Module,
    rank: int = 64,
    alpha: float = 64.0,
    init: str = "gaussian",
    targets: tuple[str, ...] = LORA_TARGETS,
) -> None:
    """Add the `ADAPTER_NAME` LoRA to `model` (a UNet or a CLIP text encoder) in place and
    freeze everything else.

    `init` picks how A starts ("gaussian": N(0, 1/rank), "kaiming": peft's default);
    B always starts at zero, so the fresh adapter leaves the model's output unchanged.
    Afterwards only the LoRA A/B weights require grad. `targets`: the projections to
    adapt; `TEXT_ENCODER_TARGETS` with a CLIPTextModel. The adapter goes in through peft
    itself (`inject_adapter_in_model`), not through diffusers' or transformers' adapter
    glue: that glue pins its own peft range and broke with transformers 5.24.
    """
    if init not in INIT_MODES:
        raise ValueError(f"LoRA init {init!r} is unknown; choose one of {sorted(INIT_MODES)}")
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(targets),
        init_lora_weights=INIT_MODES[init],
    )
    model.requires_grad_(False)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, param in model.named_parameters():
        param.requires_grad_(f".{ADAPTER_NAME}." in name and ".lora_" in name)


def lora_layers(unet: UNet2DConditionModel) -> dict[str, LoraLayer]:
    """{diffusers module path: peft LoRA layer} for every layer carrying our adapter."""
    return {
        name: module
        for name, module in unet.named_modules()
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A
    }


def lora_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The adapter's weights in peft format (`<module>.lora_A.weight` / `.lora_B.weight`), detached."""
    state = get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
    return {key: value.detach().clone() for key, value in state.items()}


def load_lora_state_dict(unet: UNet2DConditionModel, state: dict[str, torch.Tensor]) -> None:
    """Load a peft-format adapter state dict (from `lora_state_dict`) into `unet`'s adapter.

    Raises ValueError when the dict does not cover the adapter exactly.
    """
    expected = set(get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME))
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"LoRA state dict does not match the adapter: {len(missing)} missing "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
            "was it saved with the same rank and targets?"
        )
    set_peft_model_state_dict(unet, state, adapter_name=ADAPTER_NAME)


def kohya_key(module_path: str) -> str:
    """kohya name of a UNet module, e.g. `down_blocks.0....attn1.to_out.0` -> `lora_unet_down_blocks_0_..._to_out_0`."""
    return KOHYA_PREFIX + module_path.replace(".", "_")


def kohya_te_key(module_path: str) -> str:
    """kohya name of a CLIP text-encoder module, with or without the `text_model.` level:
    `encoder.layers.0.self_attn.q_proj` -> `lora_te_text_model_encoder_layers_0_self_attn_q_proj`."""
    if not module_path.startswith("text_model."):
        module_path = "text_model." + module_path
    return KOHYA_TE_PREFIX + module_path.replace(".", "_")


def kohya_state_dict(unet: UNet2DConditionModel, key_of=kohya_key) -> dict[str, torch.Tensor]:
    """The adapter as kohya tensors: `.lora_down.weight` [r, in], `.lora_up.weight` [out, r], `.alpha` (0-d).

    `key_of(module path) -> kohya name`: `kohya_key` for a UNet, `kohya_te_key` for a text encoder.
    """
    layers = lora_layers(unet)
    if not layers:
        raise ValueError(f"the {type(unet).__name__} has no '{ADAPTER_NAME}' LoRA adapter; call add_lora first")
    state = {}
    for path, layer in layers.items():
        if layer.use_rslora.get(ADAPTER_NAME, False):
            raise ValueError(f"{path}: rsLoRA scaling has no kohya equivalent")
        key = key_of(path)
        state[f"{key}.lora_down.weight"] = layer.lora_A[ADAPTER_NAME].weight.detach()
        state[f"{key}.lora_up.weight"] = layer.lora_B[ADAPTER_NAME].weight.detach()
        state[f"{key}.alpha"] = torch.tensor(float(layer.lora_alpha[ADAPTER_NAME]), dtype=torch.float32)
    return state


def _adapter_rank_alpha(unet: UNet2DConditionModel) -> tuple[int, float]:
    config = unet.peft_config[ADAPTER_NAME]
    return int(config.r), float(config.lora_alpha)


def _as_metadata_value(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def export_kohya(
    unet: UNet2DConditionModel,
    path: str | os.PathLike,
    metadata: dict | None = None,
    rank: int | None = None,
    alpha: float | None = None,
    text_encoder: torch.nn.Module | None = None,
) -> Path:
    """Write the adapter as a kohya-format LoRA `.safetensors` (atomic) and return its path.

    Keys are `lora_unet_<diffusers module path, dots as underscores>` + `.lora_down.weight`,
    `.lora_up.weight` and `.alpha` (the real lora_alpha, so loaders scale by alpha/rank like
    peft does). `metadata` (method, preset, loss weights, steps, fingerprints...) goes into
    the header; non-string values are stored as str/JSON. `rank`/`alpha`, when given, must
    match the adapter. `text_encoder`: a CLIPTextModel carrying our adapter, written too
    as `lora_te_text_model_...` keys.
    """
    target = Path(path)
    if target.suffix != ".safetensors":
        raise ValueError(f"LoRA export path {target} must end in .safetensors")
    real_rank, real_alpha = _adapter_rank_alpha(unet)
    if (rank is not None and rank != real_rank) or (alpha is not None and float(alpha) != real_alpha):
        raise ValueError(
            f"export_kohya got rank={rank}, alpha={alpha} but the adapter has rank={real_rank}, alpha={real_alpha}"
        )
    header = {key: _as_metadata_value(value) for key, value in (metadata or {}).items()}
    header.update(
        ss_network_module="networks.lora",
        ss_network_dim=str(real_rank),
        ss_network_alpha=_as_metadata_value(real_alpha),
        scoft_format_version=FORMAT_VERSION,
    )
    tensors = kohya_state_dict(unet)
    if text_encoder is not None:
        tensors.update(kohya_state_dict(text_encoder, kohya_te_key))
    atomic_save_safetensors(tensors, target, metadata=header)
    logger.info("wrote LoRA %s (%d tensors, rank %d, alpha %s)", target, len(tensors), real_rank, real_alpha)
    return target


def read_lora_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a `.safetensors` header ({} when it has none)."""
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})
