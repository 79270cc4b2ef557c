"""`SCoFTTrainer`: the SCoFT objective (scoft_objective.py) run by the LoRA training loop
(loop.py). The loop holds everything but the losses (optimizer, schedule, accumulation,
precision, checkpoints, resume, export); the objective holds SCoFT's modules, batch,
losses and caches. The bundle given is never mutated.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import TrainConfig
from .features import FeatureDistance
from .loop import LoRALoop, NonFiniteLossError
from .scoft_objective import SCoFTObjective

__all__ = ["NonFiniteLossError", "SCoFTTrainer"]


class SCoFTTrainer(LoRALoop):
    """`dataset`: a CCUB dataset (data.load_ccub); checkpoints go to `output_dir`/checkpoints."""

    objective: SCoFTObjective

    def __init__(self, bundle, dataset, config: TrainConfig, output_dir: str | Path | None = None):
        super().__init__(bundle, SCoFTObjective(bundle, dataset, config), output_dir)

    def distance(self, role: str) -> FeatureDistance:
        """The feature distance for "perceptual" or "contrastive" (shared when identical)."""
        return self.objective.distance(role)

    # The objective's pieces under the trainer's former names (tests drive them directly).
    def _latents(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.objective.latents(pixels)

    def _embed(self, texts: list[str]) -> torch.Tensor:
        return self.objective.embed(texts)

    def _decoded_losses(self, batch, z_t, t, cond) -> dict[str, torch.Tensor]:
        return self.objective.decoded_losses(batch, z_t, t, cond)
