"""SFSL training settings.

The loop fields (steps, lr, rank, ...) are `LoopConfig`'s, because `SFSLTrainer` runs the
same loop; the rest are the DreamBooth and spurious-feature settings. Defaults follow
diffusers' train_dreambooth_lora example where it has one (lr 1e-4, prior weight 1.0,
constant LR).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import LoopConfig
from ..settings import from_mapping, redefault, setting
from .classifier import FAMILIES

LOSS_NAMES = ("instance", "prior", "spurious")
INSTANCE_TEMPLATE = "a photo of {identifier} {class_name}"
CLASS_TEMPLATE = "a photo of {class_name}"


@dataclass(frozen=True)
class SFSLConfig(LoopConfig):
    """Every SFSL trainer setting: the loop's (LoopConfig, some with DreamBooth's defaults)
    plus the DreamBooth and spurious-feature ones, each declared once."""

    class_name: str = setting("object", "the class word, e.g. 'dog' (fills the prompt templates)")
    identifier: str = setting("sks", "rare token naming the spurious concept in the instance prompt")
    instance_template: str = setting(INSTANCE_TEMPLATE, "instance prompt template ({identifier}, {class_name})")
    class_template: str = setting(CLASS_TEMPLATE, "class (prior) prompt template ({class_name})")
    prior_loss_weight: float = setting(1.0, "weight of the prior-preservation loss on class images (0: off)",
                                       min=0.0, max=100.0, step=0.01)
    spurious_weight: float = setting(0.1, "weight of the spurious feature similarity loss (0: off)", min=0.0,
                                     max=100.0, step=0.001)
    spurious_every: int = setting(1, "run the decoded-generation branch (spurious loss) every N steps", min=1,
                                  max=1_000_000)
    classifier: str = setting("torchvision:resnet50", "feature classifier, torchvision:<name> or timm:<name> (robust "
                              "weights advised), or biaslab:<head> (a bias-lab judge-format network)")
    classifier_weights: str | None = setting(None, "local weights of the classifier (.safetensors or state-dict "
                                             ".pth; biaslab: its folder)")
    classifier_size: int = setting(224, "classifier input side in pixels (0: keep the image size)", min=0, max=4096)
    target_class: int = setting(-1, "the classifier's index of the target class (needed by the spurious loss)",
                                min=-1, max=1_000_000)
    train_text_encoder: bool = setting(True, "also train a LoRA on the CLIP text encoder (q/k/v/out projections)")
    steps: int = redefault(LoopConfig, "steps", 400)
    grad_accum: int = redefault(LoopConfig, "grad_accum", 1)
    lr_schedule: str = redefault(LoopConfig, "lr_schedule", "constant")
    rank: int = redefault(LoopConfig, "rank", 16)
    alpha: float = redefault(LoopConfig, "alpha", 16.0)

    describe = "SFSL"

    def cross_field_problems(self) -> list[str]:
        family, _, name = self.classifier.partition(":")
        checks = [
            (family in FAMILIES and bool(name),
             f"classifier {self.classifier!r}: write torchvision:<name>, timm:<name> or biaslab:<head>"),
            (self.spurious_weight == 0 or self.target_class >= 0,
             f"the spurious loss needs target_class >= 0 (the classifier's class index), got {self.target_class}"),
        ]
        return [message for ok, message in checks if not ok]

    @property
    def instance_prompt(self) -> str:
        return self.instance_template.format(identifier=self.identifier, class_name=self.class_name)

    @property
    def class_prompt(self) -> str:
        return self.class_template.format(class_name=self.class_name)

    def weight(self, loss: str) -> float:
        """The weight of "instance" (always 1), "prior" or "spurious"."""
        return {"instance": 1.0, "prior": self.prior_loss_weight, "spurious": self.spurious_weight}[loss]

    @classmethod
    def from_dict(cls, values: dict) -> SFSLConfig:
        return from_mapping(cls, values, "SFSL")
