"""Every scorer of the ablation reads every generated image.

- "second_judge" (second_judge.py) and "rules" (rules.py): independent; no training loss
  of the ablation loads them (scorers.check_independent), so the headline uses only them.
- "judge": the lab's development judge (judge.py). It is also the feature space of the
  circular row, so its numbers are reported apart.
Verdicts are bool arrays [N]: stereotype, relevant (the named culture's signature
shows), and faithful (the prompted concept; judges only). Images are float
[N, 3, 32, 32] in [-1, 1].
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..assets import WEIGHTS_DIR
from ..judgenet import JudgeNet, load_judgenet
from .evaluate import judge_generated
from .rules import STEREOTYPE_LABEL, RuleScorer, load_rules
from .scorers import RULES, SECOND_JUDGE
from .second_judge import SecondJudge, load_second_judge

INDEPENDENT = ("second_judge", "rules")
DEVELOPMENT = "judge"
SCORER_TITLES = {"second_judge": "second judge", "rules": "rule-based", "judge": "development judge"}


@dataclass
class Scorers:
    judge: JudgeNet
    second_judge: SecondJudge
    rules: RuleScorer

    def verdicts(self, images: torch.Tensor, cultures: list[str], concepts: list[str]) -> dict[str, np.ndarray]:
        """{"<scorer>/<what>": bool [N]} for every scorer."""
        out = {}
        for name, network in (("judge", self.judge), ("second_judge", self.second_judge)):
            verdicts = judge_generated(network, images, cultures, concepts)
            for what in ("stereotype", "relevant", "faithful"):
                out[f"{name}/{what}"] = getattr(verdicts, what).cpu().numpy()
        for what, values in self.rules.verdicts(images.cpu(), cultures).items():
            out[f"rules/{what}"] = values.numpy()
        return out

    def stereotype(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """{scorer: bool [N]} stereotype verdicts (no prompt needed)."""
        shares = self.rules.shares(images.cpu())[:, STEREOTYPE_LABEL]
        return {"judge": self.judge.predict(images)["stereotype"].cpu().numpy() == 1,
                "second_judge": self.second_judge.predict(images)["stereotype"].cpu().numpy() == 1,
                "rules": (shares > self.rules.stereotype_share).numpy()}


def load_scorers(weights_dir: str | os.PathLike = WEIGHTS_DIR, device: str = "cpu") -> Scorers:
    weights_dir = Path(weights_dir)
    return Scorers(load_judgenet(weights_dir / "judge").to(device),
                   load_second_judge(weights_dir / SECOND_JUDGE).to(device), load_rules(weights_dir / RULES))


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Share of equal verdicts and Cohen's kappa of two bool arrays [N]."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    observed = float((a == b).mean())
    expected = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    kappa = (observed - expected) / (1 - expected) if expected < 1 else 1.0
    return {"agreement": observed, "kappa": kappa}
