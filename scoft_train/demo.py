"""`make demo`: the whole fine-tune-then-compare pipeline on the embedded default.

Loads the embedded tiny model and the shipped sample CCUB folder, trains a SCoFT
(FT+MPC) LoRA for a few steps, and writes a baseline | SCoFT grid from the same seeds
plus the loss plot. Runs on a CPU in about a minute, with no download.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig
from .data import load_ccub
from .models import load_default_model
from .progress import tqdm_progress
from .sample_data import CCUB_DEMO_DIR
from .stages import compare, train_scoft

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoResult:
    grid: Path
    loss_plot: Path
    lora: Path


def demo_config(steps: int) -> TrainConfig:
    """SCoFT on the tiny model: small rank, every 5th step contrastive, random LPIPS trunk
    (no VGG weights exist offline; the log says so)."""
    return TrainConfig(
        preset="FT+MPC", steps=steps, grad_accum=1, rank=8, alpha=8.0, lr=1e-3, warmup_steps=2,
        contrastive_every=5, denoise_steps=8, allow_random_backbone=True, checkpoint_every=0,
    )


def run_demo(out_dir: str | Path, steps: int = 30) -> DemoResult:
    out_dir = Path(out_dir)
    bundle = load_default_model()
    dataset = load_ccub(CCUB_DEMO_DIR, resolution=bundle.resolution)
    with tqdm_progress("SCoFT training") as on_step:
        trained = train_scoft(bundle, dataset, demo_config(steps), out_dir, on_step=on_step)
    prompts = [record.text for record in dataset.records[:4]]
    with tqdm_progress("sampling") as on_step:
        grid = compare(bundle, trained.lora, prompts, out_dir / "compare_grid.png", seed=0, steps=20, cfg=4.5,
                       on_step=on_step)
    return DemoResult(grid=grid, loss_plot=trained.loss_plot, lora=trained.lora)
