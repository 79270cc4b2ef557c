"""The SCoFT trainer with the judge's feature space as the L_P / L_C distance.

No VGG, DreamSim or DINO weights exist offline, and the bias lab has a better-suited
backbone anyway: the judge, trained on this world. Everything else is the engine's
SCoFTTrainer unchanged; the LoRA metadata records the substitution.
"""

from __future__ import annotations

from ..features import FeatureDistance
from ..trainer import SCoFTTrainer
from .judge import Judge, JudgeDistance

FEATURE_SPACE = "biaslab-judge"


class JudgeFeatureTrainer(SCoFTTrainer):
    """SCoFTTrainer whose `distance(role)` is `JudgeDistance(judge)` for both roles."""

    def __init__(self, bundle, dataset, config, judge: Judge, output_dir=None):
        self.judge_distance = JudgeDistance(judge).to(bundle.device)
        super().__init__(bundle, dataset, config, output_dir)

    def distance(self, role: str) -> FeatureDistance:
        return self.judge_distance

    def lora_metadata(self) -> dict[str, str]:
        return {**super().lora_metadata(), "scoft_feature_space": FEATURE_SPACE}
