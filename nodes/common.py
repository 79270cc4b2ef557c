"""What every SCoFT node shares: the custom types, progress, and host folder look-ups.

Custom types travel between nodes as typed Python objects:
    SCOFT_MODEL    scoft_train.models.ModelBundle (cached by the loader; never mutated)
    SCOFT_DATASET  scoft_train.data.CCUBDataset
    SCOFT_LORA     LoraFile below (a kohya-format .safetensors on disk)

ComfyUI modules (`folder_paths`, `comfy.*`) are imported inside functions only, so
this package also imports outside ComfyUI (e.g. under pytest).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from ..scoft_train.lora import read_lora_metadata

logger = logging.getLogger(__name__)

SCOFT_MODEL = "SCOFT_MODEL"
SCOFT_DATASET = "SCOFT_DATASET"
SCOFT_LORA = "SCOFT_LORA"
SEED_MAX = 0xFFFFFFFF
SAMPLE = "sample"  # folder inputs: a working copy of data shipped with the engine


@dataclass(frozen=True)
class LoraFile:
    """A kohya-format LoRA file: its path, rank, alpha and header metadata."""

    path: Path
    rank: int
    alpha: float
    metadata: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> LoraFile:
        """Rank and alpha from the kohya header fields, else from the first lora_down tensor."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"LoRA file {path} does not exist")
        metadata = read_lora_metadata(path)
        rank, alpha = metadata.get("ss_network_dim"), metadata.get("ss_network_alpha")
        if rank is None or alpha is None:
            with safe_open(str(path), framework="pt") as handle:
                down = next((key for key in handle.keys() if key.endswith(".lora_down.weight")), None)
                if down is None:
                    raise ValueError(
                        f"{path} holds no kohya '.lora_down.weight' tensors; export it with "
                        "scoft_train.lora.export_kohya or pick a kohya-format LoRA"
                    )
                rank = rank or handle.get_slice(down).get_shape()[0]
                alpha_key = down.replace(".lora_down.weight", ".alpha")
                alpha = alpha or (float(handle.get_tensor(alpha_key)) if alpha_key in handle.keys() else rank)
        return cls(path=path, rank=int(rank), alpha=float(alpha), metadata=metadata)

    def __str__(self) -> str:  # shown by ComfyUI in error reports
        return f"LoraFile({self.path.name}, rank {self.rank}, alpha {self.alpha:g})"


def tip(text: str, **options) -> dict:
    """Widget options with a tooltip (ComfyUI shows it on hover)."""
    return {"tooltip": text, **options}


def prompt_lines(text: str) -> list[str]:
    """One prompt per non-blank line, surrounding spaces removed."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def progress_callback(total: int):
    """An engine on_step(step, total, logs) that drives ComfyUI's progress bar and stops
    on the UI's cancel: the interrupt check raises, and the engine cleans up and re-raises."""
    import comfy.model_management
    import comfy.utils

    bar = comfy.utils.ProgressBar(total)

    def on_step(step: int, total: int, logs: dict) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(step, total)

    return on_step


def torch_device(name: str):
    """'auto' = the device ComfyUI computes on (CPU with --cpu), else the name as given."""
    import comfy.model_management

    return comfy.model_management.get_torch_device() if name == "auto" else name


def inside(folder: Path, path: Path) -> bool:
    """Whether `path` resolves to a place inside `folder`."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def input_folder(text: str, sample) -> Path:
    """A folder input: '' or 'sample' = `sample(input dir)` (a working copy of shipped data made
    there on first use); absolute as given; relative = under ComfyUI's input dir."""
    import folder_paths

    base = Path(folder_paths.get_input_directory())
    text = text.strip()
    if text in ("", SAMPLE):
        return sample(base)
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path
