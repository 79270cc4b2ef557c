"""No-reference image quality (TOPIQ-NR, the SFSL paper's choice) through pyiqa, offline only.

pyiqa normally downloads both TOPIQ's weights and its ImageNet ResNet-50 backbone; here
the network is built with neither (`pretrained=False, backbone_pretrain=False`, so
nothing is fetched) and filled from a LOCAL TOPIQ checkpoint in pyiqa's release layout,
`{"params": state_dict}` of the whole network, backbone included. The file is read with
`torch.load(weights_only=True)` and loaded strictly: pyiqa's own loader for a local path
(`arch_util.load_pretrained_network`) unpickles with `weights_only=False` and loads
non-strictly, so a wrong file would run with random weights unnoticed. When pyiqa is not
installed or no weights file is given, the score is skipped with a message saying why
(without importing pyiqa, which is slow to import).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

TOPIQ_METRIC = "topiq_nr"
TOPIQ_FILE_HINT = ("the pyiqa release file cfanet_nr_koniq_res50-9a73138b.pth "
                   "(github.com/chaofengc/IQA-PyTorch releases, v0.1-weights)")


def topiq_scores(images: list[torch.Tensor], weights: str | Path | None) -> tuple[torch.Tensor | None, str]:
    """TOPIQ-NR scores [N] (higher = better) of N images [3,H,W] in [0,1] (sizes may differ), and a note.

    Returns (None, why) when pyiqa is missing or `weights` is None; never downloads.
    """
    if importlib.util.find_spec("pyiqa") is None:
        return None, "quality skipped: pyiqa is not installed (pip install pyiqa, then pass --quality-weights)"
    if weights is None:
        return None, f"quality skipped: no TOPIQ weights given (--quality-weights: {TOPIQ_FILE_HINT})"
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"TOPIQ weights not found: {weights}; expected {TOPIQ_FILE_HINT}")
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("params"), dict):
        raise ValueError(f"{weights} is not a TOPIQ checkpoint ({{'params': state_dict}}); expected {TOPIQ_FILE_HINT}")
    import pyiqa

    metric = pyiqa.create_metric(TOPIQ_METRIC, device=images[0].device, pretrained=False, backbone_pretrain=False)
    metric.net.load_state_dict({key.removeprefix("module."): value for key, value in checkpoint["params"].items()})
    with torch.no_grad():
        scores = torch.cat([metric(image[None].float()).flatten() for image in images]).cpu()
    return scores, f"quality: TOPIQ-NR ({weights.name})"
