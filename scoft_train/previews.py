"""Live previews during training: every N steps, fixed prompts from fixed seeds sampled with
the model being trained, beside the base model's images and a small loss graph.

Each preview is one PNG, `<run folder>/previews/step_XXXXXX.png`: rows = prompts, columns
"base" (the frozen bundle, sampled once) | "step N" (the in-memory trained UNet and,
for SFSL, text encoder), and at the right the loss curves so far. Previews draw their own
noise from their seeds and touch no training RNG, so a run with previews trains exactly
like one without. The time they cost is logged and added to `trainer.timings["preview"]`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from .atomic import atomic_save_image
from .grid import compare_grid
from .plot import SMALL, draw_losses
from .progress import OnStep
from .sampling import sample_tensor, to_pil

logger = logging.getLogger(__name__)

FOLDER = "previews"
BASE_LABEL = "base"
CELL = 64  # px: preview cells are enlarged (nearest neighbour) to at least this
BACKGROUND = (255, 255, 255)

OnPreview = Callable[[int, int, Image.Image], None]  # (step, total, preview image)


@dataclass(frozen=True)
class PreviewSettings:
    """What a preview samples. `every` = steps between previews (0 = no previews; the
    last step always gets one when on); `prompts` = fixed validation prompts, prompt i
    from seed `seed + i`; `steps`, `cfg`, `scheduler` as in sampling.sample_tensor."""

    every: int = 0
    prompts: tuple[str, ...] = ()
    seed: int = 0
    steps: int = 20
    cfg: float = 5.0
    scheduler: str = "ddim"

    def __post_init__(self):
        if self.every < 0:
            raise ValueError(f"preview every must be >= 0 steps (0 = off), got {self.every}")
        if self.every and not self.prompts:
            raise ValueError("previews need at least one prompt")

    def due(self, step: int, total: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == total)


def dataset_prompts(texts: list[str], count: int = 4) -> tuple[str, ...]:
    """Up to `count` distinct prompts spread evenly over `texts` (e.g. a dataset's captions in order)."""
    distinct = list(dict.fromkeys(text for text in texts if text.strip()))
    picks = sorted({round(i * (len(distinct) - 1) / max(1, count - 1)) for i in range(min(count, len(distinct)))})
    return tuple(distinct[i] for i in picks)


def preview_path(folder: Path, step: int) -> Path:
    return Path(folder) / FOLDER / f"step_{step:06d}.png"


def preview_image(base: list[Image.Image], trained: list[Image.Image], prompts: tuple[str, ...], step: int,
                  history: list[dict]) -> Image.Image:
    """Rows = prompts, columns base model | step N (cells enlarged by nearest neighbour to at least CELL
    px, no blur), the loss graph of `history` at the right."""
    grid = compare_grid({BASE_LABEL: base, f"step {step}": trained}, list(prompts), min_cell=CELL)
    panels = [draw_losses(history, layout=SMALL)] if history else []
    image = Image.new("RGB", (grid.width + sum(p.width for p in panels),
                              max([grid.height, *(p.height for p in panels)])), BACKGROUND)
    image.paste(grid, (0, 0))
    for panel in panels:
        image.paste(panel, (grid.width, 0))
    return image


class LivePreviews:
    """An on_step(step, total, logs) callback that writes a preview when `settings.due`,
    hands it to `on_preview(step, total, image)` and logs where it went and what it cost."""

    def __init__(self, trainer, settings: PreviewSettings, on_preview: OnPreview | None = None):
        if trainer.output_dir is None:
            raise ValueError("previews need the trainer's output_dir (they go to <output_dir>/previews)")
        self.trainer, self.settings, self.on_preview = trainer, settings, on_preview
        self._base: list[Image.Image] | None = None

    def _sample(self, unet=None, text_encoder=None) -> list[Image.Image]:
        bundle = self.trainer.bundle
        if text_encoder is not None:
            bundle = dataclasses.replace(bundle, text_encoder=text_encoder)
        s = self.settings
        pixels = sample_tensor(bundle, list(s.prompts), s.seed, unet=unet, scheduler=s.scheduler, steps=s.steps,
                               cfg=s.cfg, batch_size=len(s.prompts))
        return to_pil(pixels)

    def _sample_trained(self) -> list[Image.Image]:
        modules = self.trainer.trainable
        modes = {name: module.training for name, module in modules.items()}
        try:
            for module in modules.values():
                module.eval()
            with torch.no_grad():
                return self._sample(modules["unet"], modules.get("text_encoder"))
        finally:
            for name, module in modules.items():
                module.train(modes[name])

    def render(self, step: int) -> Image.Image:
        """The preview at `step` (see `preview_image`)."""
        if self._base is None:
            with torch.no_grad():
                self._base = self._sample()
        return preview_image(self._base, self._sample_trained(), self.settings.prompts, step, self.trainer.history)

    def __call__(self, step: int, total: int, logs: dict) -> None:
        if not self.settings.due(step, total):
            return
        started = time.perf_counter()
        image = self.render(step)
        path = preview_path(self.trainer.output_dir, step)
        atomic_save_image(image, path)
        seconds = time.perf_counter() - started
        self.trainer.timings["preview"] += seconds
        logger.info("preview at step %d/%d: %s (%.2f s; %.1f s in previews so far)",
                    step, total, path, seconds, self.trainer.timings["preview"])
        if self.on_preview is not None:
            self.on_preview(step, total, image)


def with_previews(trainer, settings: PreviewSettings | None, on_step: OnStep | None,
                  on_preview: OnPreview | None = None) -> OnStep | None:
    """`on_step` followed by live previews when `settings.every` > 0; else `on_step` as given."""
    if settings is None or settings.every == 0:
        return on_step
    previews = LivePreviews(trainer, settings, on_preview)

    def both(step: int, total: int, logs: dict) -> None:
        if on_step is not None:
            on_step(step, total, logs)
        previews(step, total, logs)

    return both
