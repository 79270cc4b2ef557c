"""Apply a LoRA file to a model the way ComfyUI's LoraLoader does: per adapted module,
W' = W + strength * (alpha / rank) * up @ down, merged into a copy of the module.

Each module keeps its own rank and alpha, so the per-module alpha and mixed ranks of
resized and shared LoRAs apply at their real strength (peft's single-config loading
scales them all alike). Readable layouts:
- kohya: `lora_unet_<module>` / `lora_te_<module>` + `.lora_down.weight` [r, in(, kh, kw)],
  `.lora_up.weight` [out, r(, 1, 1)] and an optional `.alpha` (absent: alpha = rank).
  Linear and conv modules (LoCon) alike.
- peft/diffusers: `unet.<module>` / `text_encoder.<module>` + `.lora_A.weight` / `.lora_B.weight`.
Anything else (LoHa, LoKr, DoRA, SDXL text encoders, a training checkpoint, a LoRA for
another model family) is refused by name with what the file is; nothing is half-applied.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer

from .lora import kohya_key, kohya_te_key
from .weightfile import read_safetensors

PARTS = {"lora_unet_": "unet", "lora_te_": "text_encoder"}
PEFT_PARTS = {"unet.": "unet", "text_encoder.": "text_encoder"}
KOHYA_SUFFIXES = {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}
PEFT_SUFFIXES = {".lora_A.weight": "down", ".lora_B.weight": "up", ".alpha": "alpha"}
# key patterns of adapter kinds that plain merging cannot express here, and what they are
OTHER_KINDS = {
    r"\.hada_w1": "a LyCORIS LoHa", r"\.lokr_w1": "a LyCORIS LoKr", r"\.dora_scale$": "a DoRA",
    r"\.lora_mid\.": "a LoCon with CP decomposition", r"^lora_te[12]_": "an SDXL LoRA",
    r"\.diff(_b)?$": "a full-weight difference (LyCORIS diff)",
}


@dataclass(frozen=True)
class LoraModule:
    """One adapted module of a LoRA file. `name`: its kohya name (lora_unet_..., lora_te_...)."""

    name: str
    part: str
    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self, weight_shape: torch.Size) -> torch.Tensor:
        """(alpha / rank) * up @ down, float32, shaped like the module's weight."""
        up = self.up.float().flatten(1)
        down = self.down.float().flatten(1)
        return ((self.alpha / self.rank) * (up @ down)).reshape(weight_shape)


def _kohya_stem(key: str, suffixes: dict[str, str]) -> tuple[str, str] | None:
    for suffix, role in suffixes.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _kohya_name(module_path: str, part: str) -> str:
    """A peft-layout module path as its kohya name (the one key space this module works in)."""
    return kohya_te_key(module_path) if part == "text_encoder" else kohya_key(module_path)


def describe_foreign(keys: list[str], header: dict[str, str]) -> str | None:
    """What a file is when it is not a LoRA this module applies (None when it may be one)."""
    if header.get("format", "").startswith("scoft-checkpoint"):
        return ("a SCoFT training checkpoint (it resumes training; it is not a LoRA): use the exported "
                "`.safetensors` LoRA of that run (its `lora.safetensors`, or Save SCoFT LoRA)")
    base = header.get("ss_base_model_version", "")
    if base and not base.startswith(("sd_v1", "sd_1", "sd1")):
        return f"a LoRA for another model family (ss_base_model_version={base!r}); only SD 1.x LoRAs apply here"
    for pattern, kind in OTHER_KINDS.items():
        hit = next((key for key in keys if re.search(pattern, key)), None)
        if hit is not None:
            return f"{kind} file (key {hit!r}); only plain LoRA/LoCon (lora_down/lora_up) files apply here"
    return None


def read_lora_modules(path: str | os.PathLike) -> list[LoraModule]:
    """Every adapted module of a LoRA file, checked: known layout, finite values, down/up ranks agree."""
    path = Path(path)
    tensors, header = read_safetensors(path, what="LoRA")
    foreign = describe_foreign(list(tensors), header)
    if foreign:
        raise ValueError(f"LoRA {path} is {foreign}")
    found: dict[str, dict] = {}
    unknown = []
    for key, tensor in tensors.items():
        entry = None
        for prefix, part in PARTS.items():
            stem = _kohya_stem(key, KOHYA_SUFFIXES) if key.startswith(prefix) else None
            if stem:
                entry = (stem[0], part, stem[1])
        for prefix, part in PEFT_PARTS.items():
            stem = _kohya_stem(key, PEFT_SUFFIXES) if key.startswith(prefix) else None
            if stem:
                entry = (_kohya_name(stem[0][len(prefix):], part), part, stem[1])
        if entry is None:
            unknown.append(key)
            continue
        name, part, role = entry
        found.setdefault(name, {"part": part})[role] = tensor
    if unknown or not found:
        raise ValueError(
            f"LoRA {path} has {len(unknown)} keys in no layout read here (e.g. {unknown[:3]}) and {len(found)} "
            "LoRA modules; readable: kohya `lora_unet_*`/`lora_te_*` with .lora_down/.lora_up(.alpha), or "
            "peft `unet.*`/`text_encoder.*` with .lora_A/.lora_B"
        )
    modules = []
    for name, entry in sorted(found.items()):
        if "down" not in entry or "up" not in entry:
            raise ValueError(f"LoRA {path}: module {name} lacks its {'up' if 'down' in entry else 'down'} weight")
        down, up = entry["down"], entry["up"]
        if down.shape[0] != up.shape[1]:
            raise ValueError(f"LoRA {path}: module {name} has down rank {down.shape[0]} but up rank {up.shape[1]}")
        for role, tensor in (("down", down), ("up", up), ("alpha", entry.get("alpha"))):
            if tensor is not None and not torch.isfinite(tensor.float()).all():
                raise ValueError(f"LoRA {path}: {name} {role} holds NaN or infinite values; the file is damaged "
                                 "(or was saved from a diverged run): re-export or re-download it")
        alpha = float(entry["alpha"]) if "alpha" in entry else float(down.shape[0])
        modules.append(LoraModule(name, entry["part"], down, up, alpha))
    return modules


def module_table(model: torch.nn.Module, part: str) -> dict[str, torch.nn.Module]:
    """{kohya name: the Linear/Conv2d that owns the weight} for every module of `model`
    (a peft-wrapped layer stands for its base layer)."""
    name_of = kohya_te_key if part == "text_encoder" else kohya_key
    table = {}
    for path, module in model.named_modules():
        if ".base_layer" in path or ".lora_" in path:
            continue
        if isinstance(module, LoraLayer):
            table[name_of(path)] = module.get_base_layer()
        elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            table[name_of(path)] = module
    return table


def merge_lora(models: dict[str, torch.nn.Module], modules: list[LoraModule], strength: float,
               source: str | os.PathLike = "LoRA") -> None:
    """Merge `modules` into `models` ({"unet": ..., "text_encoder": ...}) in place, all or nothing."""
    tables = {part: module_table(model, part) for part, model in models.items()}
    plan = []
    for lora in modules:
        target = tables.get(lora.part, {}).get(lora.name)
        if target is None:
            raise ValueError(
                f"LoRA {source}: {lora.name} names no module of this {lora.part}; the file is for another model "
                "(SD 2.x, SDXL, or another architecture), or adapts a part this model lacks"
            )
        if (lora.up.shape[0], lora.down.flatten(1).shape[1]) != tuple(target.weight.flatten(1).shape):
            raise ValueError(
                f"LoRA {source}: {lora.name} maps {lora.down.flatten(1).shape[1]} -> {lora.up.shape[0]} features but "
                f"the model's module weight is {tuple(target.weight.shape)}: the file is for another model (e.g. SD 2.x)"
            )
        plan.append((target, lora))
    with torch.no_grad():
        for target, lora in plan:
            weight = target.weight
            weight.copy_((weight.float() + strength * lora.delta(weight.shape)).to(weight.dtype))


def apply_lora_file(path: str | os.PathLike, strength: float, unet: torch.nn.Module,
                    text_encoder: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(unet, text_encoder) carrying the LoRA at `strength`: copies of the parts it adapts,
    the given modules themselves for a part it leaves alone. The inputs never change."""
    modules = read_lora_modules(path)
    parts = {lora.part for lora in modules}
    models = {"unet": copy.deepcopy(unet) if "unet" in parts else unet,
              "text_encoder": copy.deepcopy(text_encoder) if "text_encoder" in parts else text_encoder}
    merge_lora({part: models[part] for part in parts}, modules, float(strength), path)
    return models["unet"], models["text_encoder"]
