"""Judge-format networks: a small CNN over 32 px images with named classification heads,
stored as a folder (config.json + model.safetensors, fp16).

config.json records the trunk width and each head's class labels. The bias lab trains
its judge, its spurious-feature classifier and its oracle in this format; the core reads
them as a feature backbone (`features.JudgeDistance`) and as classifiers
(`sfsl.classifier`, spec `biaslab:<head>`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from .atomic import atomic_save_safetensors, atomic_write_text

SIDE = 32  # input side: three stages take 32 px to a 4x4 map
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
Heads = dict[str, tuple[str, ...]]


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class JudgeNet(nn.Module):
    """`heads`: {head name: its class labels}. Input: images [B, 3, H, W] in [-1, 1],
    resized to SIDE px; output: {head: logits [B, len(labels)]}."""

    def __init__(self, heads: Heads, width: int = 32):
        super().__init__()
        self.width = width
        self.labels = dict(heads)
        self.stages = nn.ModuleList([
            nn.Sequential(_block(3, width, 1), _block(width, 2 * width, 2)),  # 16x16
            nn.Sequential(_block(2 * width, 2 * width, 1), _block(2 * width, 4 * width, 2)),  # 8x8
            _block(4 * width, 4 * width, 2),  # 4x4
        ])
        self.heads = nn.ModuleDict({name: nn.Linear(4 * width, len(labels)) for name, labels in self.labels.items()})

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Activations of the three stages: [B, 2w, 16, 16], [B, 4w, 8, 8], [B, 4w, 4, 4]."""
        x = images
        if x.shape[-1] != SIDE or x.shape[-2] != SIDE:
            x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", antialias=True)
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

    def only(self, head: str) -> JudgeNet:
        """A copy with the same trunk and just `head` (frozen, eval)."""
        single = JudgeNet({head: self.labels[head]}, self.width)
        single.load_state_dict({k: v for k, v in self.state_dict().items()
                                if not k.startswith("heads.") or k.startswith(f"heads.{head}.")})
        return single.to(next(self.parameters()).device).requires_grad_(False).eval()

    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Class indices per head, {head: LongTensor [B]}, for images in [-1, 1]."""
        return predict_heads(self, images, batch_size)

    def save(self, folder: str | Path, metadata: dict | None = None) -> Path:
        """config.json + model.safetensors (fp16) in `folder`."""
        folder = Path(folder)
        config = {"width": self.width, "heads": {k: list(v) for k, v in self.labels.items()}, **(metadata or {})}
        atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        atomic_save_safetensors({k: v.half() for k, v in self.state_dict().items()}, folder / WEIGHTS_NAME)
        return folder


@torch.no_grad()
def predict_heads(network: nn.Module, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Class indices per head, {head: LongTensor [B]}, of any network with `labels` (head -> classes)
    whose forward returns {head: logits}, in batches of `batch_size`."""
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in network.labels}
    for start in range(0, len(images), batch_size):
        for name, logits in network(images[start : start + batch_size]).items():
            outputs[name].append(logits.argmax(dim=1))
    return {name: torch.cat(values) for name, values in outputs.items()}


def load_judgenet(folder: str | Path) -> JudgeNet:
    """The network saved in `folder` (frozen, eval, fp32)."""
    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"judge file {folder / name} is missing; run `python -m scoft_train biaslab pretrain`")
    config = json.loads((folder / CONFIG_NAME).read_text())
    network = JudgeNet({k: tuple(v) for k, v in config["heads"].items()}, width=int(config["width"]))
    network.load_state_dict({k: v.float() for k, v in load_file(str(folder / WEIGHTS_NAME)).items()})
    return network.requires_grad_(False).eval()
