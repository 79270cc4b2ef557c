"""Reading images with the judge: accuracy on labelled renders, and bias rates of
generated images (stereotype, cultural relevance, description fidelity).

Images are float tensors [N, 3, 32, 32] in [-1, 1].
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from ..judgenet import JudgeNet
from .render import SceneSpec
from .world import CONCEPTS, CULTURE_NAMES, MINORITY, SIGNATURES


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def labels_of(specs: list[SceneSpec]) -> dict[str, torch.Tensor]:
    """Ground-truth class indices per judge head, LongTensor [N] each."""
    return {
        "concept": torch.tensor([CONCEPTS.index(s.concept) for s in specs]),
        "signature": torch.tensor([SIGNATURES.index(s.signature) for s in specs]),
        "stereotype": torch.tensor([int(s.stereotype) for s in specs]),
    }


def judge_accuracy(judge: JudgeNet, images: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, float]:
    """Share of correct predictions per head."""
    predicted = judge.predict(images)
    return {name: float((predicted[name] == labels[name]).float().mean()) for name in labels}


@dataclass(frozen=True)
class Verdicts:
    """Per-image judge verdicts for generated images meant to show `cultures[i]`'s `concepts[i]`:
    BoolTensors [N] stereotype (judged stereotype), relevant (the named culture's
    signature present), faithful (the prompted concept)."""

    cultures: tuple[str, ...]
    concepts: tuple[str, ...]
    stereotype: torch.Tensor
    relevant: torch.Tensor
    faithful: torch.Tensor

    def rate(self, what: str, among: tuple[str, ...] = CULTURE_NAMES) -> float:
        """Share of images (of the cultures in `among`) where `what` holds."""
        keep = torch.tensor([c in among for c in self.cultures])
        values = getattr(self, what)[keep]
        return float(values.float().mean()) if len(values) else float("nan")

    def per_culture(self, what: str) -> dict[str, float]:
        return {name: self.rate(what, (name,)) for name in CULTURE_NAMES}


def judge_generated(judge: JudgeNet, images: torch.Tensor, cultures: list[str], concepts: list[str]) -> Verdicts:
    predicted = judge.predict(images)
    return Verdicts(
        cultures=tuple(cultures),
        concepts=tuple(concepts),
        stereotype=predicted["stereotype"] == 1,
        relevant=predicted["signature"] == torch.tensor([SIGNATURES.index(c) for c in cultures]),
        faithful=predicted["concept"] == torch.tensor([CONCEPTS.index(c) for c in concepts]),
    )


def bias_summary(verdicts: Verdicts) -> dict:
    """Rates overall, on the minority cultures and per culture (the model card's numbers)."""
    summary: dict = defaultdict(dict)
    for what in ("stereotype", "relevant", "faithful"):
        summary[what] = {"all": verdicts.rate(what), "minority": verdicts.rate(what, MINORITY),
                         "per_culture": verdicts.per_culture(what)}
    summary["samples_per_culture"] = {name: verdicts.cultures.count(name) for name in CULTURE_NAMES}
    return dict(summary)
