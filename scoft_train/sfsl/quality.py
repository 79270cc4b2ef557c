"""No-reference image quality (TOPIQ-NR, the SFSL paper's choice) through pyiqa, offline only.

pyiqa normally downloads both TOPIQ's weights and its ImageNet ResNet-50 backbone; here
the network is built with `backbone_pretrain=False` and filled from a LOCAL TOPIQ
checkpoint (it holds the backbone too), with the hub forced offline. When pyiqa is not
installed or no weights file is given, the score is skipped with a message saying why.
"""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import torch

TOPIQ_METRIC = "topiq_nr"
TOPIQ_FILE_HINT = ("the pyiqa release file cfanet_nr_koniq_res50-9a73138b.pth "
                   "(github.com/chaofengc/IQA-PyTorch releases, v0.1-weights)")


def topiq_scores(images: list[torch.Tensor], weights: str | Path | None) -> tuple[torch.Tensor | None, str]:
    """TOPIQ-NR scores [N] (higher = better) of N images [3,H,W] in [0,1] (sizes may differ), and a note.

    Returns (None, why) when pyiqa is missing or `weights` is None; never downloads.
    """
    try:
        import pyiqa
    except ImportError:
        return None, "quality skipped: pyiqa is not installed (pip install pyiqa, then pass --quality-weights)"
    if weights is None:
        return None, f"quality skipped: no TOPIQ weights given (--quality-weights: {TOPIQ_FILE_HINT})"
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"TOPIQ weights not found: {weights}; expected {TOPIQ_FILE_HINT}")
    with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):
        metric = pyiqa.create_metric(TOPIQ_METRIC, device=images[0].device, backbone_pretrain=False,
                                     pretrained_model_path=str(weights))
    with torch.no_grad():
        scores = torch.cat([metric(image[None].float()).flatten() for image in images]).cpu()
    return scores, f"quality: TOPIQ-NR ({weights.name})"
