"""The SFSL training stage, shared by the CLI, the ComfyUI node and the tests."""

from __future__ import annotations

from pathlib import Path

from ..previews import OnPreview, PreviewSettings
from ..stages import OnStep, TrainOutputs, run_trainer
from .classifier import Classifier
from .config import SFSLConfig
from .trainer import SFSLTrainer


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
    preview_every: int = 0,
    on_preview: OnPreview | None = None,
) -> TrainOutputs:
    """Train an SFSL LoRA (UNet + text encoder); write the LoRA, loss history (JSON) and plot (PNG).

    `instances`/`classes`: `data.load_image_folder` datasets (reference spurious images,
    class images). `resume`: a checkpoint path, True for the newest in
    `output_dir/checkpoints`, or None. `preview_every` > 0: every that many steps a preview of
    the instance and class prompts (seed config.seed + i, cfg config.cfg) goes to
    output_dir/previews and to `on_preview(step, total, image)`.
    """
    trainer = SFSLTrainer(bundle, instances, classes, config, Path(output_dir), classifier=classifier)
    previews = PreviewSettings(every=preview_every, prompts=(config.instance_prompt, config.class_prompt),
                               seed=config.seed, cfg=config.cfg)
    return run_trainer(trainer, lora_name, on_step, resume, previews, on_preview)
