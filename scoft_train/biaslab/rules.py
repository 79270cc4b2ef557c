"""The rule-based scorer: the world's own definition of the stereotype and of each
culture's signature, read off the pixels with no learned weights.

The world draws a scene's sky, ground and object from one palette: the culture's
(sky, ground, body, accent) when authentic, the stereotype look's browns when not
(world.py). Every pixel is matched to the nearest palette colour after the best
brightness gain (GAIN_RANGE covers the renderer's jitter and dusk); pixels farther
than `max_residual` (RGB units after the gain) from every colour stay unassigned.
- stereotype: the share of assigned pixels that match the stereotype look is above
  `stereotype_share`;
- signature: the culture whose palette holds most of the other assigned pixels;
  relevant = not stereotype and that culture is the one prompted.
The two thresholds are calibrated on fresh VAE round-tripped renders (balanced draw)
and the accuracy is measured on another fresh draw; `biaslab scorers` prints both and
stores them in rules.json. The scorer says nothing about the concept (shapes).
Images are float [N, 3, H, W] in [-1, 1].
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write_text
from .world import CULTURE_NAMES, CULTURES, STEREOTYPE

GAIN_RANGE = (0.5, 1.2)
STEREOTYPE_LABEL = len(CULTURE_NAMES)  # palette label of the stereotype colours


def palette() -> tuple[torch.Tensor, torch.Tensor]:
    """Colours [K, 3] in 0..255 and their labels [K] (culture index, or STEREOTYPE_LABEL)."""
    colours, labels = [], []
    for index, item in enumerate(CULTURES):
        for colour in (item.sky, item.ground, item.body, item.accent):
            colours.append(colour)
            labels.append(index)
    for colour in (STEREOTYPE.sky, STEREOTYPE.ground, STEREOTYPE.body, STEREOTYPE.trim, STEREOTYPE.grime,
                   STEREOTYPE.crack):
        colours.append(colour)
        labels.append(STEREOTYPE_LABEL)
    return torch.tensor(colours, dtype=torch.float32), torch.tensor(labels)


@dataclass(frozen=True)
class RuleScorer:
    max_residual: float = 28.0
    stereotype_share: float = 0.5

    def pixel_labels(self, images: torch.Tensor) -> torch.Tensor:
        """Palette label per pixel [N, H*W]; -1 = unassigned."""
        colours, labels = palette()
        pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).reshape(-1, 1, 3)  # [P, 1, 3]
        gain = ((pixels * colours).sum(-1) / (colours * colours).sum(-1)).clamp(*GAIN_RANGE)  # [P, K]
        residual = (pixels - gain[..., None] * colours).norm(dim=-1)
        best, nearest = residual.min(dim=1)
        assigned = torch.where(best <= self.max_residual, labels[nearest], torch.tensor(-1))
        return assigned.reshape(images.shape[0], -1)

    def shares(self, images: torch.Tensor) -> torch.Tensor:
        """Share of the assigned pixels per palette label [N, cultures + 1] (rows sum to 1, or 0 if none)."""
        assigned = self.pixel_labels(images)
        counts = torch.stack([(assigned == k).sum(dim=1) for k in range(STEREOTYPE_LABEL + 1)], dim=1).float()
        return counts / counts.sum(dim=1, keepdim=True).clamp_min(1)

    def verdicts(self, images: torch.Tensor, cultures: list[str]) -> dict[str, torch.Tensor]:
        """BoolTensors [N]: stereotype, relevant (the named culture's signature, not stereotype)."""
        shares = self.shares(images)
        stereotype = shares[:, STEREOTYPE_LABEL] > self.stereotype_share
        signature = shares[:, :STEREOTYPE_LABEL].argmax(dim=1)
        named = torch.tensor([CULTURE_NAMES.index(c) for c in cultures])
        return {"stereotype": stereotype, "relevant": ~stereotype & (signature == named)}

    def save(self, path: str | Path, calibration: dict) -> Path:
        atomic_write_text(Path(path), json.dumps({**asdict(self), "calibration": calibration}, indent=2) + "\n")
        return Path(path)


def load_rules(path: str | Path) -> RuleScorer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rule-scorer calibration {path} is missing; run `python -m scoft_train biaslab scorers`")
    record = json.loads(path.read_text())
    return RuleScorer(float(record["max_residual"]), float(record["stereotype_share"]))


def rule_accuracy(scorer: RuleScorer, images: torch.Tensor, stereotype: torch.Tensor, cultures: list[str]) -> dict:
    """Balanced stereotype accuracy and signature accuracy (on authentic images) of `scorer`."""
    verdict = scorer.verdicts(images, cultures)
    flagged, truth = verdict["stereotype"], stereotype.bool()
    balanced = 0.5 * (float(flagged[truth].float().mean()) + float((~flagged[~truth]).float().mean()))
    return {"stereotype_balanced_accuracy": balanced,
            "signature_accuracy_authentic": float(verdict["relevant"][~truth].float().mean())}


def calibrate(images: torch.Tensor, stereotype: torch.Tensor, cultures: list[str]) -> tuple[RuleScorer, dict]:
    """The thresholds with the best mean of the two accuracies on a calibration draw."""
    best, best_score, grid = None, -1.0, {}
    for residual in (12.0, 16.0, 22.0, 28.0):
        for share in np.linspace(0.2, 0.8, 13):
            scorer = RuleScorer(residual, round(float(share), 3))
            accuracy = rule_accuracy(scorer, images, stereotype, cultures)
            score = 0.5 * sum(accuracy.values())
            grid[f"{residual:g}/{share:.2f}"] = round(score, 4)
            if score > best_score:
                best, best_score = scorer, score
    return best, {"grid_mean_accuracy": grid}
