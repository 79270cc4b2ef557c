"""The judge: a judge-format network (../judgenet.py) that reads a world image and says
what it shows.

Heads (logits): concept [B, 4] (CONCEPTS), signature [B, 6] (the five cultures +
"none"), stereotype [B, 2] (no, yes). Trained on VAE round-tripped renders, since
generated images are VAE-decoded. It also serves as the feature space of L_P / L_C
(backbone "biaslab-judge", `features.JudgeDistance`) and of KID (`JudgeEmbedding`).
The same network with other heads is the spurious-feature lab's classifier and oracle
(`spurious.py`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..judgenet import JudgeNet
from .world import CONCEPTS, SIGNATURES

HEADS: dict[str, tuple[str, ...]] = {"concept": CONCEPTS, "signature": SIGNATURES, "stereotype": ("no", "yes")}


class JudgeEmbedding(nn.Module):
    """Images [B, 3, H, W] in [0, 1] -> judge embeddings [B, 4w] (the KID feature extractor)."""

    def __init__(self, judge: JudgeNet):
        super().__init__()
        self.judge = judge

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.judge.embed(images.float() * 2 - 1)
