"""Loading the shipped bias-lab artefacts (or a `biaslab pretrain` output folder).

`load_world()` is the embedded default the demo and the workflows can use: a
`ModelBundle` of the world model (32 px, SD-1.x architecture, real CLIP tokenizer).
Its recommended sampling settings are `WORLD_SAMPLING`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import ControlNetModel

from ..assets import WEIGHTS_DIR
from ..controlnet import load_controlnet
from ..judgenet import JudgeNet, load_judgenet
from ..models import ModelBundle, load_model
from .pretrain import CARD_JSON

WORLD_SAMPLING = {"scheduler": "ddim", "steps": 20, "cfg": 5.0}


def load_world(weights_dir: str | os.PathLike = WEIGHTS_DIR, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> ModelBundle:
    """The world model (frozen, eval) from `weights_dir`/world."""
    return load_model(Path(weights_dir) / "world", dtype=dtype, device=device)


def load_world_controlnet(weights_dir: str | os.PathLike = WEIGHTS_DIR, dtype: torch.dtype = torch.float32,
                          device: str | torch.device = "cpu") -> ControlNetModel:
    """The world model's depth ControlNet (frozen, eval)."""
    return load_controlnet(Path(weights_dir) / "controlnet", dtype=dtype, device=device)


def load_world_judge(weights_dir: str | os.PathLike = WEIGHTS_DIR, device: str | torch.device = "cpu") -> JudgeNet:
    return load_judgenet(Path(weights_dir) / "judge").to(device)


def model_card(weights_dir: str | os.PathLike = WEIGHTS_DIR) -> dict:
    """The artefacts' model card (model_card.json)."""
    path = Path(weights_dir) / CARD_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `python -m scoft_train biaslab pretrain --out {weights_dir}`")
    return json.loads(path.read_text())
