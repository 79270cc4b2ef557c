"""Training settings: the loop's (LoopConfig), SCoFT's (TrainConfig: loss weights, the paper's
ablation presets). Each setting is declared once, with its range and choices (settings.py)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .features import BACKBONES
from .generation import GRAD_MODES
from .losses import CONTRASTIVE_FORMS
from .settings import from_mapping, help_of, problems, setting

LOSS_NAMES = ("ldm", "mem", "perceptual", "contrastive")

# Which losses each ablation of the paper enables (FT+MPC is SCoFT).
PRESETS: dict[str, tuple[str, ...]] = {
    "FT": ("ldm",),
    "FT+M": ("ldm", "mem"),
    "FT+MP": ("ldm", "mem", "perceptual"),
    "FT+MPC": ("ldm", "mem", "perceptual", "contrastive"),
}


class BranchSetting(NamedTuple):
    """How the decoded-generation branch runs: S denoising steps, every N steps, whether L_M keeps its
    weight (False: weight 0, which also skips its no-grad UNet call, about half a plain step at SD 1.5 size),
    and the branch's guidance scale (None: the configured one; at 1 each branch step calls the UNet once)."""

    denoise_steps: int
    contrastive_every: int
    memorization: bool = True
    cfg: float | None = None


# The paper's reference, and the cheaper point `train --fast` selects: 4 DDIM steps instead of 20, the branch as
# often, without L_M. In the bias lab (`biaslab branch`) this kept all of FT+MPC's effect, while S <= 2, an unguided
# branch, a rarer one (even with its weights scaled up) or a one-step x0 estimate lost it; README: cost and effect.
BRANCH_SETTINGS = {
    "reference": BranchSetting(20, 10),
    "fast": BranchSetting(4, 10, memorization=False),
}
LR_SCHEDULES = ("cosine", "constant", "linear")
MIXED_PRECISION = ("no", "fp16", "bf16")
SEED_MAX = 0xFFFFFFFF


def backbone_names() -> tuple[str, ...]:
    """The feature backbones known now (read at check time: the registry may grow)."""
    return tuple(BACKBONES)


@dataclass(frozen=True)
class LossWeights:
    """Reference weights: 0.7 L_LDM + 0.3 L_M + 0.05 L_C + 0.01 L_P."""

    ldm: float = 0.7
    mem: float = 0.3
    contrastive: float = 0.05
    perceptual: float = 0.01


@dataclass(frozen=True)
class LoopConfig:
    """The LoRA training loop's settings, shared by every objective (SCoFT, SFSL); each
    field declares its default, help, range and choices once (settings.py)."""

    steps: int = setting(100, "optimizer steps to train", min=1, max=1_000_000)
    batch_size: int = setting(1, "training examples per micro-batch", min=1, max=256)
    grad_accum: int = setting(4, "micro-batches accumulated per optimizer step", min=1, max=1024)
    lr: float = setting(1e-4, "AdamW learning rate", min=1e-6, max=1.0, step=1e-6)
    lr_schedule: str = setting("cosine", "learning-rate schedule after warm-up: cosine, constant or linear",
                               choices=LR_SCHEDULES)
    warmup_steps: int = setting(0, "linear warm-up steps", min=0, max=1_000_000)
    max_grad_norm: float = setting(1.0, "gradient clipping norm", min=0.0, max=1000.0, step=0.01)
    rank: int = setting(64, "LoRA rank", min=1, max=1024)
    alpha: float = setting(64.0, "LoRA alpha (the update is scaled by alpha/rank)", min=0.0, max=4096.0, step=0.5)
    seed: int = setting(0, "seed of data order, noise, timesteps and the random grad step", min=0, max=SEED_MAX)
    denoise_steps: int = setting(20, "denoising steps S of the decoded-generation branch", min=1, max=1000)
    cfg: float = setting(4.5, "classifier-free guidance scale in the decoded-generation branch", min=0.0, max=30.0,
                         step=0.1)
    grad_mode: str = setting("first", "which branch step records gradients: first, last or random", choices=GRAD_MODES)
    mixed_precision: str = setting("no", "autocast on CUDA: no, fp16 or bf16", choices=MIXED_PRECISION)
    gradient_checkpointing: bool = setting(False, "trade compute for activation memory: the UNet, and the VAE decoder in "
                                           "the decoded-generation branch")
    checkpoint_every: int = setting(0, "save a resumable checkpoint every K steps (0: only on interrupt)", min=0,
                                    max=1_000_000)
    checkpoint_limit: int = setting(2, "keep at most this many checkpoints (0: keep all)", min=0, max=1000)

    def __post_init__(self):
        found = problems(self) + self.cross_field_problems()
        if found:
            raise ValueError(f"invalid {self.describe} config: " + "; ".join(found))

    describe = "training"

    def cross_field_problems(self) -> list[str]:
        """Checks that involve more than one field (the declared ranges are checked anyway)."""
        return []

    @classmethod
    def help(cls, name: str) -> str:
        return help_of(cls, name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """Every SCoFT trainer setting. Defaults follow the SCoFT reference code where it has one."""

    preset: str = setting("FT+MPC", "ablation preset: FT (L_LDM), FT+M, FT+MP, FT+MPC (= SCoFT, all four losses)",
                          choices=tuple(PRESETS))
    weights: LossWeights = dataclasses.field(default_factory=LossWeights)
    contrastive_every: int = setting(10, "run the decoded-generation branch (L_P, L_C) every N steps", min=1,
                                     max=1_000_000)
    perceptual_backbone: str = setting("lpips-vgg", "L_P distance: lpips-vgg, lpips-alex, hf (a local vision model), "
                                       "biaslab-judge or biaslab-ssl", choices=backbone_names)
    perceptual_weights: str | None = setting(None, "local weights of the L_P backbone (.safetensors file, or folder "
                                             "for hf)")
    contrastive_backbone: str = setting("lpips-vgg", "L_C feature space: lpips-vgg, lpips-alex, hf (DINO/CLIP vision "
                                        "folder), biaslab-judge or biaslab-ssl", choices=backbone_names)
    contrastive_weights: str | None = setting(None, "local weights of the L_C backbone (.safetensors file, or folder "
                                              "for hf)")
    allow_random_backbone: bool = setting(False, "allow LPIPS with a random trunk when no weights are given (smoke "
                                          "tests only)")
    contrastive_form: str = setting("unbounded", "L_C form: unbounded (reference) or hinge", choices=CONTRASTIVE_FORMS)
    margin: float = setting(0.1, "hinge margin of L_C", min=0.0, max=100.0, step=0.01)

    @property
    def enabled_losses(self) -> tuple[str, ...]:
        return PRESETS[self.preset]

    def weight(self, loss: str) -> float:
        """The loss's weight, 0 when the preset leaves it out."""
        return getattr(self.weights, loss) if loss in self.enabled_losses else 0.0

    @property
    def needs_decoded_branch(self) -> bool:
        return self.weight("perceptual") > 0 or self.weight("contrastive") > 0

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        values = dict(values)
        if isinstance(values.get("weights"), dict):
            values["weights"] = LossWeights(**values["weights"])
        return from_mapping(cls, values, "training")


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
