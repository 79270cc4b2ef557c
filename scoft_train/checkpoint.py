"""Training checkpoints as one .safetensors file: LoRA, optimizer, RNG, schedule, step.

Tensors: `lora.<peft key>`, `optim.<param index>.<state key>`, `rng.<name>` (uint8
RNG states). Header metadata (strings): step, config, optimizer param groups, LR
scheduler state and loss history as JSON. No pickle anywhere, so resuming from a
checkpoint someone sent you cannot run code.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_save_safetensors

log = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{6,})\.safetensors$")


@dataclass
class TrainingState:
    step: int
    lora: dict[str, torch.Tensor]
    optimizer: dict
    lr_scheduler: dict
    rng: dict[str, torch.Tensor]
    history: list[dict]
    config: dict


def save_checkpoint(path: Path, state: TrainingState) -> Path:
    tensors = {f"lora.{k}": v for k, v in state.lora.items()}
    for index, values in state.optimizer["state"].items():
        for key, value in values.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
    tensors.update({f"rng.{k}": v for k, v in state.rng.items()})
    metadata = {
        "format": "scoft-checkpoint-1",
        "step": str(state.step),
        "config": json.dumps(state.config, sort_keys=True),
        "param_groups": json.dumps(state.optimizer["param_groups"]),
        "lr_scheduler": json.dumps(state.lr_scheduler),
        "history": json.dumps(state.history),
    }
    atomic_save_safetensors(tensors, path, metadata)
    return path


def load_checkpoint(path: str | Path) -> TrainingState:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != "scoft-checkpoint-1":
            raise ValueError(f"{path} is not a SCoFT training checkpoint (header format={metadata.get('format')!r})")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    optim_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim_state.setdefault(int(index), {})[name] = value
    return TrainingState(
        step=int(metadata["step"]),
        lora={k[len("lora.") :]: v for k, v in tensors.items() if k.startswith("lora.")},
        optimizer={"state": optim_state, "param_groups": json.loads(metadata["param_groups"])},
        lr_scheduler=json.loads(metadata["lr_scheduler"]),
        rng={k[len("rng.") :]: v for k, v in tensors.items() if k.startswith("rng.")},
        history=json.loads(metadata["history"]),
        config=json.loads(metadata["config"]),
    )


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:06d}.safetensors"


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in `folder`, oldest step first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def rotate_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink()
        log.info("removed old checkpoint %s", old)
