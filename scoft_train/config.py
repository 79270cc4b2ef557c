"""Training settings: loss weights, the paper's ablation presets, TrainConfig."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .features import BACKBONES
from .generation import GRAD_MODES
from .losses import CONTRASTIVE_FORMS

LOSS_NAMES = ("ldm", "mem", "perceptual", "contrastive")

# Which losses each ablation of the paper enables (FT+MPC is SCoFT).
PRESETS: dict[str, tuple[str, ...]] = {
    "FT": ("ldm",),
    "FT+M": ("ldm", "mem"),
    "FT+MP": ("ldm", "mem", "perceptual"),
    "FT+MPC": ("ldm", "mem", "perceptual", "contrastive"),
}
LR_SCHEDULES = ("cosine", "constant", "linear")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class LossWeights:
    """Reference weights: 0.7 L_LDM + 0.3 L_M + 0.05 L_C + 0.01 L_P."""

    ldm: float = 0.7
    mem: float = 0.3
    contrastive: float = 0.05
    perceptual: float = 0.01


@dataclass(frozen=True)
class TrainConfig:
    """Every trainer setting. Defaults follow the SCoFT reference code where it has one;
    each field's metadata carries the help text shown by the CLI and the node tooltips."""

    preset: str = field(default="FT+MPC", metadata={"help": "ablation preset: FT (L_LDM), FT+M, FT+MP, FT+MPC (= SCoFT, all four losses)"})
    weights: LossWeights = field(default_factory=LossWeights)
    steps: int = field(default=100, metadata={"help": "optimizer steps to train"})
    batch_size: int = field(default=1, metadata={"help": "CCUB examples per micro-batch"})
    grad_accum: int = field(default=4, metadata={"help": "micro-batches accumulated per optimizer step"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    lr_schedule: str = field(default="cosine", metadata={"help": "learning-rate schedule after warm-up: cosine, constant or linear"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    rank: int = field(default=64, metadata={"help": "LoRA rank"})
    alpha: float = field(default=64.0, metadata={"help": "LoRA alpha (the update is scaled by alpha/rank)"})
    seed: int = field(default=0, metadata={"help": "seed of data order, noise, timesteps and the random grad step"})
    contrastive_every: int = field(default=10, metadata={"help": "run the decoded-generation branch (L_P, L_C) every N steps"})
    denoise_steps: int = field(default=20, metadata={"help": "denoising steps S of the decoded-generation branch"})
    cfg: float = field(default=4.5, metadata={"help": "classifier-free guidance scale in the decoded-generation branch"})
    grad_mode: str = field(default="first", metadata={"help": "which branch step records gradients: first, last or random"})
    perceptual_backbone: str = field(default="lpips-vgg", metadata={"help": "L_P distance: lpips-vgg, lpips-alex, hf (a local vision model) or biaslab-judge"})
    perceptual_weights: str | None = field(default=None, metadata={"help": "local weights of the L_P backbone (.safetensors file, or folder for hf)"})
    contrastive_backbone: str = field(default="lpips-vgg", metadata={"help": "L_C feature space: lpips-vgg, lpips-alex, hf (DINO/CLIP vision folder) or biaslab-judge"})
    contrastive_weights: str | None = field(default=None, metadata={"help": "local weights of the L_C backbone (.safetensors file, or folder for hf)"})
    allow_random_backbone: bool = field(default=False, metadata={"help": "allow LPIPS with a random trunk when no weights are given (smoke tests only)"})
    contrastive_form: str = field(default="unbounded", metadata={"help": "L_C form: unbounded (reference) or hinge"})
    margin: float = field(default=0.1, metadata={"help": "hinge margin of L_C"})
    mixed_precision: str = field(default="no", metadata={"help": "autocast on CUDA: no, fp16 or bf16"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for UNet activation memory"})
    checkpoint_every: int = field(default=0, metadata={"help": "save a resumable checkpoint every K steps (0: only on interrupt)"})
    checkpoint_limit: int = field(default=2, metadata={"help": "keep at most this many checkpoints (0: keep all)"})

    def __post_init__(self):
        checks = [
            (self.preset in PRESETS, f"preset {self.preset!r}: choose one of {', '.join(PRESETS)}"),
            (self.grad_mode in GRAD_MODES, f"grad_mode {self.grad_mode!r}: choose one of {GRAD_MODES}"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule {self.lr_schedule!r}: choose one of {LR_SCHEDULES}"),
            (self.contrastive_form in CONTRASTIVE_FORMS, f"contrastive_form {self.contrastive_form!r}"),
            (self.mixed_precision in MIXED_PRECISION, f"mixed_precision {self.mixed_precision!r}"),
            (self.perceptual_backbone in BACKBONES, f"perceptual_backbone {self.perceptual_backbone!r}"),
            (self.contrastive_backbone in BACKBONES, f"contrastive_backbone {self.contrastive_backbone!r}"),
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}"),
            (self.rank >= 1, f"rank must be >= 1, got {self.rank}"),
            (self.contrastive_every >= 1, f"contrastive_every must be >= 1, got {self.contrastive_every}"),
            (self.denoise_steps >= 1, f"denoise_steps must be >= 1, got {self.denoise_steps}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @property
    def enabled_losses(self) -> tuple[str, ...]:
        return PRESETS[self.preset]

    def weight(self, loss: str) -> float:
        """The loss's weight, 0 when the preset leaves it out."""
        return getattr(self.weights, loss) if loss in self.enabled_losses else 0.0

    @property
    def needs_decoded_branch(self) -> bool:
        return self.weight("perceptual") > 0 or self.weight("contrastive") > 0

    @staticmethod
    def help(name: str) -> str:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TrainConfig)}[name]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(values)
        if isinstance(values.get("weights"), dict):
            values["weights"] = LossWeights(**values["weights"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def load_config_file(path: str | Path) -> dict:
    """Settings from a .json or .yaml/.yml file (a flat mapping, `weights` may nest)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text)
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    return values
