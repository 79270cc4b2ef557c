"""SFSL training settings.

The generic loop fields (steps, lr, rank, ...) keep the meaning, help text and checks of
`TrainConfig`, because `SFSLTrainer` runs `SCoFTTrainer`'s loop; the rest are the
DreamBooth and spurious-feature settings. Defaults follow diffusers'
train_dreambooth_lora example where it has one (lr 1e-4, prior weight 1.0, constant LR).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from ..config import LR_SCHEDULES, MIXED_PRECISION, TrainConfig
from ..generation import GRAD_MODES
from .classifier import FAMILIES

LOSS_NAMES = ("instance", "prior", "spurious")
INSTANCE_TEMPLATE = "a photo of {identifier} {class_name}"
CLASS_TEMPLATE = "a photo of {class_name}"
_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _shared(name: str, default=dataclasses.MISSING):
    """A field with TrainConfig's help text and (unless given) its default."""
    value = _TRAIN_FIELDS[name].default if default is dataclasses.MISSING else default
    return field(default=value, metadata=_TRAIN_FIELDS[name].metadata)


@dataclass(frozen=True)
class SFSLConfig:
    """Every SFSL trainer setting; each field's metadata carries its help text."""

    class_name: str = field(default="object", metadata={"help": "the class word, e.g. 'dog' (fills the prompt templates)"})
    identifier: str = field(default="sks", metadata={"help": "rare token naming the spurious concept in the instance prompt"})
    instance_template: str = field(default=INSTANCE_TEMPLATE,
                                   metadata={"help": "instance prompt template ({identifier}, {class_name})"})
    class_template: str = field(default=CLASS_TEMPLATE,
                                metadata={"help": "class (prior) prompt template ({class_name})"})
    prior_loss_weight: float = field(default=1.0, metadata={"help": "weight of the prior-preservation loss on class images (0: off)"})
    spurious_weight: float = field(default=0.1, metadata={"help": "weight of the spurious feature similarity loss (0: off)"})
    spurious_every: int = field(default=1, metadata={"help": "run the decoded-generation branch (spurious loss) every N steps"})
    classifier: str = field(default="torchvision:resnet50",
                            metadata={"help": "feature classifier, torchvision:<name> or timm:<name> (robust weights advised), "
                                              "or biaslab:<head> (a bias-lab judge-format network)"})
    classifier_weights: str | None = field(default=None, metadata={"help": "local weights of the classifier (.safetensors or state-dict .pth; biaslab: its folder)"})
    classifier_size: int = field(default=224, metadata={"help": "classifier input side in pixels (0: keep the image size)"})
    target_class: int = field(default=-1, metadata={"help": "the classifier's index of the target class (needed by the spurious loss)"})
    train_text_encoder: bool = field(default=True, metadata={"help": "also train a LoRA on the CLIP text encoder (q/k/v/out projections)"})
    steps: int = _shared("steps", 400)
    batch_size: int = field(default=1, metadata={"help": "instance images (and as many class images) per micro-batch"})
    grad_accum: int = _shared("grad_accum", 1)
    lr: float = _shared("lr")
    lr_schedule: str = _shared("lr_schedule", "constant")
    warmup_steps: int = _shared("warmup_steps")
    max_grad_norm: float = _shared("max_grad_norm")
    rank: int = _shared("rank", 16)
    alpha: float = _shared("alpha", 16.0)
    seed: int = _shared("seed")
    denoise_steps: int = _shared("denoise_steps")
    cfg: float = _shared("cfg")
    grad_mode: str = _shared("grad_mode")
    mixed_precision: str = _shared("mixed_precision")
    gradient_checkpointing: bool = _shared("gradient_checkpointing")
    checkpoint_every: int = _shared("checkpoint_every")
    checkpoint_limit: int = _shared("checkpoint_limit")

    def __post_init__(self):
        checks = [
            (self.grad_mode in GRAD_MODES, f"grad_mode {self.grad_mode!r}: choose one of {GRAD_MODES}"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule {self.lr_schedule!r}: choose one of {LR_SCHEDULES}"),
            (self.mixed_precision in MIXED_PRECISION, f"mixed_precision {self.mixed_precision!r}"),
            (self.classifier.partition(":")[0] in FAMILIES and bool(self.classifier.partition(":")[2]),
             f"classifier {self.classifier!r}: write torchvision:<name>, timm:<name> or biaslab:<head>"),
            (self.spurious_weight == 0 or self.target_class >= 0,
             f"the spurious loss needs target_class >= 0 (the classifier's class index), got {self.target_class}"),
            (self.prior_loss_weight >= 0 and self.spurious_weight >= 0, "loss weights must be >= 0"),
            (self.steps >= 1 and self.batch_size >= 1 and self.grad_accum >= 1 and self.rank >= 1,
             "steps, batch_size, grad_accum and rank must be >= 1"),
            (self.spurious_every >= 1 and self.denoise_steps >= 1, "spurious_every and denoise_steps must be >= 1"),
            (self.classifier_size >= 0, f"classifier_size must be >= 0, got {self.classifier_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError("invalid SFSL config: " + "; ".join(problems))

    @property
    def instance_prompt(self) -> str:
        return self.instance_template.format(identifier=self.identifier, class_name=self.class_name)

    @property
    def class_prompt(self) -> str:
        return self.class_template.format(class_name=self.class_name)

    def weight(self, loss: str) -> float:
        """The weight of "instance" (always 1), "prior" or "spurious"."""
        return {"instance": 1.0, "prior": self.prior_loss_weight, "spurious": self.spurious_weight}[loss]

    @staticmethod
    def help(name: str) -> str:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(SFSLConfig)}[name]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SFSLConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SFSL setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
