"""The original-LDM ("single file") key layout of SD 1.x/2.x: recognise it, write it.

Reading: `checkpoint_shapes`, `refuse_other_families`, `require_parts` and
`detect_sd_version` look at a file's keys and shapes only (a .safetensors header), so
choosing a config costs no weight I/O. The model family (SDXL, SD3, Flux, inpainting, a
LoRA, ...) is recognised before anything else, so a file is refused for what it is.
Writing: diffusers ships only the LDM -> diffusers direction (`single_file_utils`); this is
the inverse. The UNet and VAE maps are built from the model configs (block types, block
count, layers per block), so any SD-1.x-shaped model maps, not only the shipped ones.
The text encoder is written in the Hugging Face CLIP layout that SD 1.x files carry
(`cond_stage_model.transformer.text_model.*`); for an SD 2.x model that is the layout
diffusers reads back, not the original OpenCLIP one (`cond_stage_model.model.*`).
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch

from .atomic import atomic_save_safetensors
from .weightfile import read_safetensors_header

logger = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
SD_VERSIONS_BY_CONTEXT = {768: "sd15", 1024: "sd21"}  # CLIP ViT-L/14 vs OpenCLIP ViT-H/14 width
SUPPORTED_FAMILIES = (
    "SCoFT trains SD 1.x and SD 2.x text-to-image models (4-channel UNet input, e.g. SD 1.5 or SD 2.1 "
    "512/768), as a single-file checkpoint or a diffusers folder"
)
# (what a file is, key fragments that only it has), checked in this order.
_OTHER_FAMILIES = (
    ("an SDXL model", ("conditioner.embedders.",)),
    ("an SD3/SD3.5 model", ("joint_blocks.",)),
    ("a Flux model", ("double_blocks.", "single_blocks.")),
    ("a Stable Video Diffusion model", (".time_stack.", ".time_mixer.")),
    ("a LoRA, not a full model", ("lora_unet_", "lora_te_", ".lora_down.", ".lora_A.", "lora_controlnet")),
    ("a ControlNet, not a full model", ("control_model.", "input_hint_block.")),
)
_INPUT_CHANNELS = {9: "an SD 1.x/2.x inpainting model", 8: "an InstructPix2Pix model", 5: "an SD 2.x depth-to-image model"}

# A rule maps a diffusers module prefix to (LDM prefix, renames of the leading names after it).
Rules = dict[str, tuple[str, dict[str, str]]]

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_CONV_ATTENTION_WEIGHTS = ("q.weight", "k.weight", "v.weight", "proj_out.weight")

_DOWN_TYPES = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
_UP_TYPES = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}


def _per_block(value: int | list[int] | tuple[int, ...], count: int) -> list[int]:
    return [int(value)] * count if isinstance(value, int) else [int(v) for v in value]


def _has_attention(block_type: str, known: dict[str, bool]) -> bool:
    if block_type not in known:
        raise ValueError(f"UNet block type {block_type!r} has no LDM layout here; supported: {sorted(known)}")
    return known[block_type]


def unet_rules(config: Mapping[str, Any]) -> Rules:
    """diffusers -> LDM prefixes for a UNet2DConditionModel config (SD 1.x/2.x family)."""
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    layers = _per_block(config["layers_per_block"], len(down_types))
    rules: Rules = {
        "time_embedding.linear_1.": ("time_embed.0.", {}),
        "time_embedding.linear_2.": ("time_embed.2.", {}),
        "conv_in.": ("input_blocks.0.0.", {}),
        "conv_norm_out.": ("out.0.", {}),
        "conv_out.": ("out.2.", {}),
    }
    index = 1
    for block, block_type in enumerate(down_types):
        attention = _has_attention(block_type, _DOWN_TYPES)
        for layer in range(layers[block]):
            rules[f"down_blocks.{block}.resnets.{layer}."] = (f"input_blocks.{index}.0.", _UNET_RESNET)
            if attention:
                rules[f"down_blocks.{block}.attentions.{layer}."] = (f"input_blocks.{index}.1.", {})
            index += 1
        if block < len(down_types) - 1:
            rules[f"down_blocks.{block}.downsamplers.0.conv."] = (f"input_blocks.{index}.0.op.", {})
            index += 1

    mid_type = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid_type == "UNetMidBlock2DCrossAttn":
        rules["mid_block.resnets.0."] = ("middle_block.0.", _UNET_RESNET)
        rules["mid_block.attentions.0."] = ("middle_block.1.", {})
        rules["mid_block.resnets.1."] = ("middle_block.2.", _UNET_RESNET)
    elif mid_type is not None:
        raise ValueError(f"UNet mid block {mid_type!r} has no LDM layout here; supported: UNetMidBlock2DCrossAttn")

    index = 0
    up_layers = list(reversed(layers))
    for block, block_type in enumerate(up_types):
        attention = _has_attention(block_type, _UP_TYPES)
        for layer in range(up_layers[block] + 1):
            rules[f"up_blocks.{block}.resnets.{layer}."] = (f"output_blocks.{index}.0.", _UNET_RESNET)
            if attention:
                rules[f"up_blocks.{block}.attentions.{layer}."] = (f"output_blocks.{index}.1.", {})
            if layer == up_layers[block] and block < len(up_types) - 1:
                slot = 2 if attention else 1
                rules[f"up_blocks.{block}.upsamplers.0.conv."] = (f"output_blocks.{index}.{slot}.conv.", {})
            index += 1
    return rules


def vae_rules(config: Mapping[str, Any]) -> Rules:
    """diffusers -> LDM prefixes for an AutoencoderKL config (SD 1.x/2.x family)."""
    blocks = len(config["down_block_types"])
    if len(config["up_block_types"]) != blocks:
        raise ValueError(
            f"VAE has {blocks} down blocks but {len(config['up_block_types'])} up blocks; "
            "the LDM layout needs equal counts"
        )
    layers = int(config["layers_per_block"])
    rules: Rules = {"quant_conv.": ("quant_conv.", {}), "post_quant_conv.": ("post_quant_conv.", {})}
    for part in ("encoder", "decoder"):
        rules[f"{part}.conv_in."] = (f"{part}.conv_in.", {})
        rules[f"{part}.conv_out."] = (f"{part}.conv_out.", {})
        rules[f"{part}.conv_norm_out."] = (f"{part}.norm_out.", {})
        rules[f"{part}.mid_block.resnets.0."] = (f"{part}.mid.block_1.", _VAE_RESNET)
        rules[f"{part}.mid_block.resnets.1."] = (f"{part}.mid.block_2.", _VAE_RESNET)
        rules[f"{part}.mid_block.attentions.0."] = (f"{part}.mid.attn_1.", _VAE_ATTENTION)
    for block in range(blocks):
        for layer in range(layers):
            ldm = f"encoder.down.{block}.block.{layer}."
            rules[f"encoder.down_blocks.{block}.resnets.{layer}."] = (ldm, _VAE_RESNET)
        rules[f"encoder.down_blocks.{block}.downsamplers.0.conv."] = (f"encoder.down.{block}.downsample.conv.", {})
        ldm_block = blocks - 1 - block
        for layer in range(layers + 1):
            ldm = f"decoder.up.{ldm_block}.block.{layer}."
            rules[f"decoder.up_blocks.{block}.resnets.{layer}."] = (ldm, _VAE_RESNET)
        rules[f"decoder.up_blocks.{block}.upsamplers.0.conv."] = (f"decoder.up.{ldm_block}.upsample.conv.", {})
    return rules


def _rename(key: str, rules: Rules) -> str:
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut]) + "."
        if prefix in rules:
            ldm_prefix, renames = rules[prefix]
            rest = key[len(prefix) :]
            for old, new in renames.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old) :]
                    break
            return ldm_prefix + rest
    raise KeyError(key)


def _apply(state_dict: Mapping[str, torch.Tensor], rules: Rules, what: str) -> dict[str, torch.Tensor]:
    adapters = [key for key in state_dict if ".base_layer." in key or "lora_" in key]
    if adapters:
        raise ValueError(
            f"the {what} carries unmerged adapter weights (e.g. {adapters[0]}); merge them first "
            "(peft merge_and_unload) or save the adapter on its own"
        )
    out, unmapped = {}, []
    for key, tensor in state_dict.items():
        try:
            out[_rename(key, rules)] = tensor
        except KeyError:
            unmapped.append(key)
    if unmapped:
        raise ValueError(
            f"{len(unmapped)} {what} weights have no LDM name, e.g. {unmapped[:5]}; is this an SD 1.x/2.x model?"
        )
    return out


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel state dict -> LDM names without the `model.diffusion_model.` prefix."""
    return _apply(state_dict, unet_rules(config), "UNet")


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """AutoencoderKL state dict -> LDM names (no prefix); mid-attention q/k/v/proj_out
    weights become 1x1 convs, [C, C] -> [C, C, 1, 1], as in the original files."""
    out = _apply(state_dict, vae_rules(config), "VAE")
    for key, tensor in out.items():
        if ".mid.attn_1." in key and key.endswith(_VAE_CONV_ATTENTION_WEIGHTS) and tensor.ndim == 2:
            out[key] = tensor[:, :, None, None]
    return out


def text_encoder_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel state dict -> names under `text_model.` (no `cond_stage_model.transformer.`).

    transformers >= 5.6 drops the `text_model.` level from CLIPTextModel keys; both forms map.
    """
    return {"text_model." + key.removeprefix("text_model."): tensor for key, tensor in state_dict.items()}


def _parts(bundle_or_parts: Any) -> tuple[Any, Any, Any]:
    if isinstance(bundle_or_parts, Mapping):
        return bundle_or_parts["unet"], bundle_or_parts["vae"], bundle_or_parts["text_encoder"]
    return bundle_or_parts.unet, bundle_or_parts.vae, bundle_or_parts.text_encoder


def ldm_state_dict(bundle_or_parts: Any) -> dict[str, torch.Tensor]:
    """The full single-file state dict (UNet, VAE, text encoder) of a bundle or a
    {"unet", "vae", "text_encoder"} mapping; tensors are shared, not copied."""
    unet, vae, text_encoder = _parts(bundle_or_parts)
    out = {UNET_PREFIX + k: v for k, v in unet_to_ldm(unet.state_dict(), unet.config).items()}
    out.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()})
    text = text_encoder_to_ldm(text_encoder.state_dict())
    out.update({"cond_stage_model.transformer." + k: v for k, v in text.items()})
    return out


def save_single_file(
    bundle_or_parts: Any, path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Write an original-layout SD checkpoint (.safetensors) atomically, in the modules' dtype."""
    tensors = ldm_state_dict(bundle_or_parts)
    atomic_save_safetensors(tensors, path, metadata=metadata)
    logger.info("wrote single-file checkpoint %s (%d tensors)", path, len(tensors))


def checkpoint_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a single-file checkpoint; of a .safetensors only the header is read,
    and a truncated or corrupt one is refused by name (weightfile.DamagedFileError).

    .ckpt/.pt go through torch.load(weights_only=True), which refuses anything but tensors
    and plain containers; such a refusal becomes a ValueError, nothing is unpickled further.
    """
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return read_safetensors_header(
            path, what="model checkpoint", fix="it is probably a partial download or copy: download it again"
        )[0]
    try:
        state = _load_tensors_only(path)
    except (pickle.UnpicklingError, RuntimeError) as error:
        raise ValueError(
            f"{path} cannot be read as plain tensors (torch.load weights_only=True: "
            f"{str(error).splitlines()[0]}); convert it to .safetensors"
        ) from error
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}


def _load_tensors_only(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def other_family(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, str] | None:
    """(what the file is, the key or shape that shows it) for anything but an SD 1.x/2.x
    text-to-image model (SDXL, SD3, Flux, inpainting, a LoRA, ...); None otherwise."""
    keys = sorted(shapes)
    for family, fragments in _OTHER_FAMILIES:
        key = next((k for k in keys if any(fragment in k for fragment in fragments)), None)
        if key is not None:
            return family, f"key {key}"
    in_shape = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if in_shape is not None and len(in_shape) == 4 and in_shape[1] != 4:
        family = _INPUT_CHANNELS.get(in_shape[1], "an SD variant that is not text-to-image")
        return family, f"the UNet takes {in_shape[1]} input channels, text-to-image takes 4"
    return None


def refuse_other_families(shapes: Mapping[str, tuple[int, ...]], source: str | os.PathLike) -> None:
    """Refuse a file of another model family, saying what it is and what is supported."""
    found = other_family(shapes)
    if found is not None:
        family, evidence = found
        raise ValueError(f"{source} is {family} ({evidence}); {SUPPORTED_FAMILIES}")


def require_parts(shapes: Mapping[str, tuple[int, ...]], source: str | os.PathLike) -> None:
    """Refuse a file that lacks the UNet, VAE or text encoder (diffusers would quietly take
    a missing part from the config folder instead)."""
    parts = {
        "UNet": (UNET_PREFIX,),
        "VAE": (VAE_PREFIX, "vae."),
        "text encoder": (TEXT_PREFIX, OPEN_CLIP_PREFIX),
    }
    missing = [
        f"{part} ({' or '.join(prefix + '*' for prefix in prefixes)})"
        for part, prefixes in parts.items()
        if not any(key.startswith(prefixes) for key in shapes)
    ]
    if missing:
        raise ValueError(
            f"{source} lacks weights for: {', '.join(missing)}; a full SD checkpoint holds all three "
            f"(found {len(shapes)} keys, e.g. {sorted(shapes)[:3]})"
        )


def detect_sd_version(shapes: Mapping[str, tuple[int, ...]], source: str | os.PathLike = "checkpoint") -> str:
    """"sd15" or "sd21" from the UNet's cross-attention width (attn2.to_k input features);
    other families are refused first (`refuse_other_families`)."""
    refuse_other_families(shapes, source)
    unet_keys = [key for key in shapes if key.startswith(UNET_PREFIX)]
    if not unet_keys:
        raise ValueError(
            f"{source}: no {UNET_PREFIX}* keys, so not an original-layout SD checkpoint; "
            f"first keys found: {sorted(shapes)[:5]}"
        )
    widths = sorted({shapes[key][-1] for key in unet_keys if key.endswith("attn2.to_k.weight")})
    if len(widths) == 1 and widths[0] in SD_VERSIONS_BY_CONTEXT:
        return SD_VERSIONS_BY_CONTEXT[widths[0]]
    raise ValueError(
        f"{source}: UNet cross-attention width {widths or 'not found'} matches no bundled config "
        "(768 -> sd15, 1024 -> sd21); pass config= a diffusers folder describing this model"
    )
