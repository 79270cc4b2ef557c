"""One function per pipeline stage, shared by the CLI, the ComfyUI nodes and the tests."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import TrainConfig
from .grid import compare_grid, save_grid
from .plot import plot_losses, save_history_json
from .sampling import sample
from .trainer import SCoFTTrainer

log = logging.getLogger(__name__)

OnStep = Callable[[int, int, dict], None]


@dataclass(frozen=True)
class TrainOutputs:
    lora: Path
    history_json: Path
    loss_plot: Path
    history: list[dict]


def run_trainer(trainer, lora_name: str, on_step: OnStep | None = None,
                resume: str | Path | bool | None = None) -> TrainOutputs:
    """Resume (a checkpoint path, or True for the newest in the trainer's output folder),
    train, then write the LoRA, the loss history (JSON) and the loss plot (PNG) there."""
    output_dir = trainer.output_dir
    if resume:
        trainer.resume(None if resume is True else resume)
    history = trainer.train(on_step)
    outputs = TrainOutputs(
        lora=trainer.export_lora(output_dir / lora_name),
        history_json=save_history_json(history, output_dir / "loss_history.json"),
        loss_plot=plot_losses(history, output_dir / "loss_plot.png"),
        history=history,
    )
    log.info("LoRA: %s; loss plot: %s", outputs.lora, outputs.loss_plot)
    return outputs


def train_scoft(
    bundle,
    dataset,
    config: TrainConfig,
    output_dir: str | Path,
    on_step: OnStep | None = None,
    resume: str | Path | bool | None = None,
    lora_name: str = "scoft_lora.safetensors",
) -> TrainOutputs:
    """Train a SCoFT LoRA into `output_dir` (see `run_trainer`)."""
    return run_trainer(SCoFTTrainer(bundle, dataset, config, Path(output_dir)), lora_name, on_step, resume)


def compare(
    bundle,
    lora_path: str | Path,
    prompts: list[str],
    out_path: str | Path,
    seed: int = 0,
    lora_strength: float = 1.0,
    labels: tuple[str, str] = ("baseline", "SCoFT"),
    on_step: OnStep | None = None,
    **sampling,
) -> Path:
    """Baseline vs LoRA images from the same seeds, as one labelled grid PNG (rows = prompts)."""
    baseline = sample(bundle, prompts, seed, on_step=on_step, **sampling)
    tuned = sample(bundle, prompts, seed, lora_path=lora_path, lora_strength=lora_strength, on_step=on_step, **sampling)
    return save_grid(compare_grid({labels[0]: baseline, labels[1]: tuned}, prompts), out_path)
