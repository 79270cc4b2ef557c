"""Perceptual distances in the feature space of a frozen vision backbone.

Every backbone splits the distance into `features(images)` and `distance(fa, fb)`, so
the trainer can compute the features of fixed images (positives, negatives) once and
cache them. Images are float tensors [B, 3, H, W] in [-1, 1].

Backbones (registry `BACKBONES`):
- "lpips-vgg", "lpips-alex": LPIPS (the `lpips` package: its shipped linear heads on
  a VGG16 / AlexNet trunk). The trunk weights come from a local torchvision-format
  .safetensors file (`features.N.weight`...), since they cannot be downloaded here.
- "hf": any transformers vision model saved in a local folder (DINO ViT, DINOv2,
  CLIP vision); the distance is 1 - cosine similarity of the CLS embeddings.
- "biaslab-judge": the feature maps of a judge-format network (judgenet.py), by default
  the shipped bias-lab judge (the evaluator's own features: circular when the judge scores).
- "biaslab-ssl": the same distance on the shipped label-free encoder (a head-less
  judge-format trunk trained self-supervised on the bias lab's web corpus), the lab's
  stand-in for DINO / DreamSim.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .assets import JUDGE_DIR, SSL_DIR
from .judgenet import JudgeNet, load_judgenet

log = logging.getLogger(__name__)

Features = list[torch.Tensor]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_TRUNK_SEED = 0  # a random trunk (smoke tests only) is the same in every process


class FeatureDistance(nn.Module):
    """Frozen perceptual distance d_f(a, b) -> [B] (B broadcast between a and b)."""

    def features(self, images: torch.Tensor) -> Features:
        raise NotImplementedError

    def distance(self, feats_a: Features, feats_b: Features) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
        return self.distance(self.features(images_a), self.features(images_b))


class LPIPSDistance(FeatureDistance):
    """LPIPS v0.1: unit-normalised trunk activations, squared difference, learned
    per-channel weights, spatial mean, summed over the five trunk stages."""

    def __init__(self, net: str = "vgg", weights: str | Path | None = None, allow_random: bool = False):
        super().__init__()
        import lpips

        if weights is None and not allow_random:
            raise FileNotFoundError(
                f"LPIPS-{net} needs the {net} ImageNet trunk weights as a local .safetensors file "
                f"(torchvision layout: features.0.weight, ...); none was given. Convert torchvision's "
                f"{'vgg16' if net == 'vgg' else 'alexnet'} IMAGENET1K_V1 state dict with safetensors and pass its "
                f"path (--backbone-weights / perceptual_weights), or allow a random trunk for smoke tests."
            )
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # lpips builds its trunk with torchvision's deprecated `pretrained=False` argument
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            torch.manual_seed(RANDOM_TRUNK_SEED)
            self.lpips = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
        if weights is None:
            log.warning("LPIPS-%s runs on a RANDOM trunk (no weights given): the distance is not perceptual.", net)
        else:
            self._load_trunk(Path(weights))
        self.requires_grad_(False).eval()

    def _load_trunk(self, path: Path) -> None:
        from safetensors.torch import load_file

        if not path.is_file():
            raise FileNotFoundError(f"LPIPS trunk weights not found: {path} (a torchvision-layout .safetensors file)")
        state = load_file(str(path))
        trunk = self.lpips.net
        slice_of = {}
        for slice_name, block in trunk.named_children():
            for index in block._modules:
                slice_of[index] = slice_name
        mapped = {}
        for key, tensor in state.items():
            parts = key.split(".")
            if len(parts) == 3 and parts[0] == "features" and parts[1] in slice_of:
                mapped[f"{slice_of[parts[1]]}.{parts[1]}.{parts[2]}"] = tensor
        missing = set(trunk.state_dict()) - set(mapped)
        if missing:
            raise ValueError(f"{path}: not a torchvision trunk for LPIPS; missing {sorted(missing)[:4]}...")
        trunk.load_state_dict(mapped)

    def features(self, images: torch.Tensor) -> Features:
        outs = self.lpips.net.forward(self.lpips.scaling_layer(images))
        return [_unit_channels(o) for o in outs]

    def distance(self, feats_a: Features, feats_b: Features) -> torch.Tensor:
        total = 0
        for lin, fa, fb in zip(self.lpips.lins, feats_a, feats_b):
            total = total + lin((fa - fb) ** 2).mean(dim=(1, 2, 3))
        return total


def _unit_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class HFVisionDistance(FeatureDistance):
    """1 - cos(CLS_a, CLS_b) of a local transformers vision model (DINO, CLIP vision)."""

    def __init__(self, path: str | Path):
        super().__init__()
        from transformers import AutoConfig, AutoModel, CLIPVisionModel

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"vision backbone folder {folder} has no config.json: save a transformers vision model "
                f"there (e.g. DINO ViT-S/16 or a CLIP vision tower: config.json + model.safetensors)"
            )
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        model_cls = CLIPVisionModel if config.model_type in ("clip", "clip_vision_model") else AutoModel
        self.model = model_cls.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        vision_config = getattr(config, "vision_config", config)
        mean, std, size = _preprocessing(folder, vision_config.image_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.size = size
        self.requires_grad_(False).eval()

    def features(self, images: torch.Tensor) -> Features:
        x = F.interpolate((images + 1) / 2, size=(self.size, self.size), mode="bilinear", antialias=True)
        hidden = self.model(pixel_values=(x - self.mean) / self.std).last_hidden_state
        return [F.normalize(hidden[:, 0], dim=-1)]

    def distance(self, feats_a: Features, feats_b: Features) -> torch.Tensor:
        return 1 - (feats_a[0] * feats_b[0]).sum(dim=-1)


def _preprocessing(folder: Path, default_size: int) -> tuple[tuple, tuple, int]:
    """Mean, std and square input size from preprocessor_config.json, else ImageNet's."""
    config_path = folder / "preprocessor_config.json"
    if not config_path.is_file():
        return IMAGENET_MEAN, IMAGENET_STD, default_size
    config = json.loads(config_path.read_text())
    size = config.get("crop_size") or config.get("size") or default_size
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge") or default_size
    return tuple(config.get("image_mean", IMAGENET_MEAN)), tuple(config.get("image_std", IMAGENET_STD)), int(size)


class JudgeDistance(FeatureDistance):
    """LPIPS-like distance in a judge-format network's feature space: channel-normalised
    activations of its three stages, squared difference, spatial mean, summed over stages. [B]."""

    def __init__(self, judge: JudgeNet):
        super().__init__()
        self.judge = judge.requires_grad_(False).eval()

    def features(self, images: torch.Tensor) -> Features:
        return [_unit_channels(x) for x in self.judge.feature_maps(images)]

    def distance(self, feats_a: Features, feats_b: Features) -> torch.Tensor:
        return sum(((fa - fb) ** 2).sum(dim=1).mean(dim=(1, 2)) for fa, fb in zip(feats_a, feats_b))


BACKBONES = ("lpips-vgg", "lpips-alex", "hf", "biaslab-judge", "biaslab-ssl")


def build_feature_distance(name: str, weights: str | Path | None = None, allow_random: bool = False) -> FeatureDistance:
    """The backbone `name` (one of BACKBONES) with weights from the local `weights` path."""
    if name == "lpips-vgg":
        return LPIPSDistance("vgg", weights, allow_random)
    if name == "lpips-alex":
        return LPIPSDistance("alex", weights, allow_random)
    if name == "biaslab-judge":
        return JudgeDistance(load_judgenet(weights or JUDGE_DIR))
    if name == "biaslab-ssl":
        return JudgeDistance(load_judgenet(weights or SSL_DIR))
    if name == "hf":
        if weights is None:
            raise FileNotFoundError("backbone 'hf' needs the local folder of a transformers vision model")
        return HFVisionDistance(weights)
    raise ValueError(f"unknown feature backbone {name!r}; choose one of {', '.join(BACKBONES)}")
