"""The second judge: an independent reader of world images that no training loss loads.

It differs from the judge (judge.py, judgenet.py) in everything but its task: another
architecture (5x5 stem, max-pooling, ReLU, no normalisation, average + max pooled
features into an MLP), another seed, another draw of training scenes, another size of
training set, and horizontal-flip augmentation. Heads as the judge's (judge.HEADS).
Stored as a folder: config.json ("arch": ARCH, widths, heads) + model.safetensors (fp16).
Images are float [B, 3, 32, 32] in [-1, 1].
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..atomic import atomic_save_safetensors, atomic_write_text
from ..judgenet import CONFIG_NAME, WEIGHTS_NAME, Heads, predict_heads

ARCH = "biaslab-second-judge"


class SecondJudge(nn.Module):
    """{head: logits [B, classes]} for images [B, 3, 32, 32] in [-1, 1]."""

    def __init__(self, heads: Heads, widths: tuple[int, int, int] = (24, 48, 96)):
        super().__init__()
        self.labels, self.widths = dict(heads), tuple(widths)
        a, b, c = self.widths
        self.trunk = nn.Sequential(
            nn.Conv2d(3, a, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(b, c, 3, padding=1), nn.ReLU(),
        )
        self.mlp = nn.Sequential(nn.Linear(2 * c, 128), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(128, len(labels)) for name, labels in self.labels.items()})

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Hidden features [B, 128] (the KID feature space of the ablation)."""
        maps = self.trunk(images)
        return self.mlp(torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.embed(images)
        return {name: head(hidden) for name, head in self.heads.items()}

    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Class indices per head, {head: LongTensor [B]}."""
        return predict_heads(self, images, batch_size)

    def save(self, folder: str | Path, metadata: dict | None = None) -> Path:
        folder = Path(folder)
        config = {"arch": ARCH, "widths": list(self.widths), "heads": {k: list(v) for k, v in self.labels.items()},
                  **(metadata or {})}
        atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        atomic_save_safetensors({k: v.half() for k, v in self.state_dict().items()}, folder / WEIGHTS_NAME)
        return folder


def load_second_judge(folder: str | Path) -> SecondJudge:
    """The second judge saved in `folder` (frozen, eval, fp32)."""
    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"second-judge file {folder / name} is missing; run "
                                    "`python -m scoft_train biaslab scorers`")
    config = json.loads((folder / CONFIG_NAME).read_text())
    if config.get("arch") != ARCH:
        raise ValueError(f"{folder / CONFIG_NAME}: arch {config.get('arch')!r} is not {ARCH!r}")
    network = SecondJudge({k: tuple(v) for k, v in config["heads"].items()}, tuple(config["widths"]))
    network.load_state_dict({k: v.float() for k, v in load_file(str(folder / WEIGHTS_NAME)).items()})
    return network.requires_grad_(False).eval()
