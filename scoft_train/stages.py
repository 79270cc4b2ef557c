"""One function per pipeline stage, shared by the CLI, the ComfyUI nodes and the tests."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import TrainConfig
from .grid import compare_grid, save_grid
from .plot import plot_losses, save_history_json
from .previews import OnPreview, PreviewSettings, dataset_prompts, with_previews
from .progress import OnStep
from .sampling import sample_tensor, to_pil
from .trainer import SCoFTTrainer

log = logging.getLogger(__name__)

GRID_CELL = 128  # px: comparison cells of small models are enlarged (nearest neighbour) to at least this


@dataclass(frozen=True)
class TrainOutputs:
    lora: Path
    history_json: Path
    loss_plot: Path
    history: list[dict]
    resumed_from: Path | None = None  # the checkpoint resumed from (the newest intact one of this run)


def run_trainer(trainer, lora_name: str, on_step: OnStep | None = None,
                resume: str | Path | bool | None = None, previews: PreviewSettings | None = None,
                on_preview: OnPreview | None = None) -> TrainOutputs:
    """Resume (a checkpoint path, or True for the newest in the trainer's output folder),
    train, then write the LoRA, the loss history (JSON) and the loss plot (PNG) there.
    `previews`: live previews into <output folder>/previews, each also given to `on_preview`."""
    output_dir = trainer.output_dir
    if resume:
        trainer.resume(None if resume is True else resume)
    history = trainer.train(with_previews(trainer, previews, on_step, on_preview))
    outputs = TrainOutputs(
        lora=trainer.export_lora(output_dir / lora_name),
        history_json=save_history_json(history, output_dir / "loss_history.json"),
        loss_plot=plot_losses(history, output_dir / "loss_plot.png"),
        history=history,
        resumed_from=trainer.resumed_from,
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
    preview_every: int = 0,
    on_preview: OnPreview | None = None,
) -> TrainOutputs:
    """Train a SCoFT LoRA into `output_dir` (see `run_trainer`). `preview_every` > 0: every
    that many steps a preview of four of the dataset's prompts (seed config.seed + i, cfg
    config.cfg) goes to output_dir/previews and to `on_preview(step, total, image)`."""
    previews = PreviewSettings(every=preview_every, prompts=dataset_prompts([r.text for r in dataset.records]),
                               seed=config.seed, cfg=config.cfg)
    return run_trainer(SCoFTTrainer(bundle, dataset, config, Path(output_dir)), lora_name, on_step, resume,
                       previews, on_preview)


def compare(
    bundle,
    lora_path: str | Path,
    prompts: list[str],
    out_path: str | Path,
    seed: int = 0,
    lora_strength: float = 1.0,
    labels: tuple[str, str] = ("baseline", "SCoFT"),
    on_step: OnStep | None = None,
    seeds_per_prompt: int = 1,
    extra_strengths: tuple[float, ...] = (),
    scorer: Callable | None = None,
    **sampling,
) -> Path:
    """Baseline vs LoRA images from the same seeds, as one labelled grid PNG: rows = prompts,
    `seeds_per_prompt` samples each (image i of the prompt-major list starts from seed + i),
    one more column per `extra_strengths` value (e.g. (0.5,)) between baseline and LoRA.
    `scorer(prompts, images [N, H, W, 3] in 0..1) -> [grid.Mark | None] * N` marks each cell.
    Model, LoRA, strengths, prompts, seeds and sampling settings go into the PNG's metadata."""
    rows = [prompt for prompt in prompts for _ in range(seeds_per_prompt)]
    strengths = {labels[0]: 0.0, **{f"LoRA {s:g}": s for s in extra_strengths}, labels[1]: lora_strength}
    columns, marks = {}, {}
    for label, strength in strengths.items():
        pixels = sample_tensor(bundle, rows, seed, lora_path=lora_path if label != labels[0] else None,
                               lora_strength=strength, on_step=on_step, **sampling)
        columns[label] = to_pil(pixels)
        if scorer is not None:
            marks[label] = scorer(rows, pixels)
    parameters = {
        "model": bundle.source, "lora": str(lora_path), "strengths": strengths,
        "prompts": prompts, "seeds": [[seed + p * seeds_per_prompt + j for j in range(seeds_per_prompt)]
                                      for p in range(len(prompts))],
        **sampling,
    }
    grid = compare_grid(columns, prompts, marks=marks or None, per_row=seeds_per_prompt, min_cell=GRID_CELL)
    return save_grid(grid, out_path, parameters)
