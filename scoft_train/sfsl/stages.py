"""The SFSL training stage, shared by the CLI, the ComfyUI node and the tests."""

from __future__ import annotations

import logging
from pathlib import Path

from ..plot import plot_losses, save_history_json
from ..stages import OnStep, TrainOutputs
from .classifier import Classifier
from .config import SFSLConfig
from .trainer import SFSLTrainer

log = logging.getLogger(__name__)


def train_sfsl(
    bundle,
    instances,
    classes,
    config: SFSLConfig,
    output_dir: str | Path,
    on_step: OnStep | None = None,
    resume: str | Path | bool | None = None,
    classifier: Classifier | None = None,
    lora_name: str = "sfsl_lora.safetensors",
) -> TrainOutputs:
    """Train an SFSL LoRA (UNet + text encoder); write the LoRA, loss history (JSON) and plot (PNG).

    `instances`/`classes`: `data.load_image_folder` datasets (reference spurious images,
    class images). `resume`: a checkpoint path, True for the newest in
    `output_dir/checkpoints`, or None.
    """
    output_dir = Path(output_dir)
    trainer = SFSLTrainer(bundle, instances, classes, config, output_dir, classifier=classifier)
    if resume:
        trainer.resume(None if resume is True else resume)
    history = trainer.train(on_step)
    outputs = TrainOutputs(
        lora=trainer.export_lora(output_dir / lora_name),
        history_json=save_history_json(history, output_dir / "loss_history.json"),
        loss_plot=plot_losses(history, output_dir / "loss_plot.png"),
        history=history,
    )
    log.info("SFSL LoRA: %s; loss plot: %s", outputs.lora, outputs.loss_plot)
    return outputs
