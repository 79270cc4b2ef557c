"""The judge: a small CNN that reads a world image and says what it shows.

Heads (logits): concept [B, 4] (CONCEPTS), signature [B, 6] (the five cultures +
"none"), stereotype [B, 2] (no, yes). Input: images [B, 3, H, W] in [-1, 1], resized
to 32 px. Trained on VAE round-tripped renders, since generated images are VAE-decoded.
It also serves as the feature space of L_P / L_C (`JudgeDistance`) and of KID.
The same network with other heads (`heads=`) is the spurious-feature lab's classifier
and oracle (`spurious.py`); config.json records each head's labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..atomic import atomic_save_safetensors, atomic_write_text
from ..features import FeatureDistance, Features
from .world import CONCEPTS, RESOLUTION, SIGNATURES

HEADS: dict[str, tuple[str, ...]] = {"concept": CONCEPTS, "signature": SIGNATURES, "stereotype": ("no", "yes")}
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class Judge(nn.Module):
    """`heads`: {head name: its class labels}; the default is the bias judge's three."""

    def __init__(self, width: int = 32, heads: dict[str, tuple[str, ...]] | None = None):
        super().__init__()
        self.width = width
        self.labels = dict(HEADS if heads is None else heads)
        self.stages = nn.ModuleList([
            nn.Sequential(_block(3, width, 1), _block(width, 2 * width, 2)),  # 16x16
            nn.Sequential(_block(2 * width, 2 * width, 1), _block(2 * width, 4 * width, 2)),  # 8x8
            _block(4 * width, 4 * width, 2),  # 4x4
        ])
        self.heads = nn.ModuleDict({name: nn.Linear(4 * width, len(labels)) for name, labels in self.labels.items()})

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Activations of the three stages: [B, 2w, 16, 16], [B, 4w, 8, 8], [B, 4w, 4, 4]."""
        x = images
        if x.shape[-1] != RESOLUTION or x.shape[-2] != RESOLUTION:
            x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", antialias=True)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled embedding [B, 4w] of images in [-1, 1]."""
        return self.feature_maps(images)[-1].mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = self.embed(images)
        return {name: head(embedding) for name, head in self.heads.items()}

    def only(self, head: str) -> Judge:
        """A copy with the same trunk and just `head` (frozen, eval)."""
        single = Judge(self.width, {head: self.labels[head]})
        single.load_state_dict({k: v for k, v in self.state_dict().items()
                                if not k.startswith("heads.") or k.startswith(f"heads.{head}.")})
        return single.to(next(self.parameters()).device).requires_grad_(False).eval()

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Class indices per head, {head: LongTensor [B]}, for images in [-1, 1]."""
        outputs: dict[str, list[torch.Tensor]] = {name: [] for name in self.labels}
        for start in range(0, len(images), batch_size):
            for name, logits in self(images[start : start + batch_size]).items():
                outputs[name].append(logits.argmax(dim=1))
        return {name: torch.cat(values) for name, values in outputs.items()}

    def save(self, folder: str | Path, metadata: dict | None = None) -> Path:
        """config.json + model.safetensors (fp16) in `folder`."""
        folder = Path(folder)
        config = {"width": self.width, "heads": {k: list(v) for k, v in self.labels.items()}, **(metadata or {})}
        atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        atomic_save_safetensors({k: v.half() for k, v in self.state_dict().items()}, folder / WEIGHTS_NAME)
        return folder


def load_judge(folder: str | Path) -> Judge:
    """The judge saved in `folder` (frozen, eval, fp32)."""
    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"judge file {folder / name} is missing; run `python -m scoft_train biaslab pretrain`")
    config = json.loads((folder / CONFIG_NAME).read_text())
    judge = Judge(width=int(config["width"]), heads={k: tuple(v) for k, v in config["heads"].items()})
    judge.load_state_dict({k: v.float() for k, v in load_file(str(folder / WEIGHTS_NAME)).items()})
    return judge.requires_grad_(False).eval()


class JudgeDistance(FeatureDistance):
    """LPIPS-like distance in the judge's feature space: channel-normalised activations
    of its three stages, squared difference, spatial mean, summed over stages. [B]."""

    def __init__(self, judge: Judge):
        super().__init__()
        self.judge = judge.requires_grad_(False).eval()

    def features(self, images: torch.Tensor) -> Features:
        return [x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10) for x in self.judge.feature_maps(images)]

    def distance(self, feats_a: Features, feats_b: Features) -> torch.Tensor:
        return sum(((fa - fb) ** 2).sum(dim=1).mean(dim=(1, 2)) for fa, fb in zip(feats_a, feats_b))


class JudgeEmbedding(nn.Module):
    """Images [B, 3, H, W] in [0, 1] -> judge embeddings [B, 4w] (the KID feature extractor)."""

    def __init__(self, judge: Judge):
        super().__init__()
        self.judge = judge

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.judge.embed(images.float() * 2 - 1)
