"""A frozen image classifier read through its last linear layer: logits, penultimate
features and class-wise features, for the spurious loss and the evaluation.

Architectures come from torchvision (`torchvision:resnet50`) or timm (`timm:resnet50`),
built without pretrained weights and loaded from a LOCAL file (.safetensors, or a
state-dict .pth/.pt read with `torch.load(weights_only=True)`); nothing is downloaded.
`biaslab:<head>` reads one head of a judge-format network (../judgenet.py: a folder
with config.json + model.safetensors, or that model.safetensors), e.g. the shipped market
classifier of the spurious-feature lab, `biaslab:concept`.
Checkpoints of the `robustness` library (the adversarially robust ImageNet models the
SFSL paper prefers: keys `module.model.*`) and DataParallel ones (`module.*`) are
unwrapped. The number of classes is read from the file.

Class-wise features (the choice for "restricted to the target class"): for penultimate
features phi(x) in R^D and the last layer's weight row w_y of the target class y,

    g_y(x) = w_y * phi(x)   (elementwise, [D])

Its entries are exactly the per-feature contributions to the class-y logit
(logit_y = sum_d g_y(x)_d + b_y), so features the classifier does not use for y are
zeroed and those that drive y are weighted by how much they drive it; features of other
classes cannot make two images look alike. That is what "the classifier's spurious
feature for y" means operationally, and it needs no labels or extra training. The
similarity of an image to the references is the mean cosine between its g_y and each
reference's g_y (= the dot product of its unit g_y with the mean unit reference g_y),
which is scale-free, so brightness or contrast that only rescales phi does not count.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..judgenet import WEIGHTS_NAME, load_judgenet

log = logging.getLogger(__name__)

FAMILIES = ("torchvision", "timm", "biaslab")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STATE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} state dict from a local .safetensors or state-dict .pth/.pt/.bin,
    unwrapped from {"state_dict"/"model": ...} and `module.model.` / `module.` prefixes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"classifier weights not found: {path}. Put the classifier's state dict there as .safetensors "
            "(or a state-dict .pth), e.g. torchvision's resnet50 IMAGENET1K_V2 or a robust ImageNet ResNet-50 "
            "from the `robustness` library's model zoo, saved with safetensors.torch.save_file(model.state_dict())."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif path.suffix in STATE_SUFFIXES:
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"{path}: unsupported weights file type {path.suffix!r}; use one of {STATE_SUFFIXES}")
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.model.", "module."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            break
    return state


def _build(family: str, arch: str, num_classes: int | None) -> nn.Module:
    extra = {} if num_classes is None else {"num_classes": num_classes}
    if family == "torchvision":
        import torchvision

        return torchvision.models.get_model(arch, weights=None, **extra)
    import timm

    return timm.create_model(arch, pretrained=False, **extra)


def _head(model: nn.Module) -> tuple[str, nn.Linear]:
    """(path, module) of the final classification layer: timm's `get_classifier()`, else
    the last nn.Linear registered (fc, heads.head, classifier[-1] in torchvision)."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        for name, module in model.named_modules():
            if module is head and isinstance(module, nn.Linear):
                return name, module
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear classification layer")
    return linears[-1]


class _JudgeHead(nn.Module):
    """A judge-format network reduced to one head: images in [-1, 1] -> that head's logits."""

    def __init__(self, judge: nn.Module, head: str):
        super().__init__()
        self.judge, self.head = judge, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.judge(images)[self.head]


def _load_biaslab(head: str, weights: str | Path) -> nn.Module:
    path = Path(weights)
    folder = path.parent if path.name == WEIGHTS_NAME else path
    judge = load_judgenet(folder)
    if head not in judge.labels:
        raise ValueError(f"classifier biaslab:{head}: {folder} has no head {head!r}; its heads: {', '.join(judge.labels)}")
    return _JudgeHead(judge.only(head), head)


class Classifier(nn.Module):
    """Frozen classifier on images [B,3,H,W] in [-1,1]: resized to `input_size`
    (0 = as given), ImageNet-normalised, then `forward` -> (logits [B,C], penultimate [B,D])."""

    def __init__(self, model: nn.Module, name: str, input_size: int = 224,
                 mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD):
        super().__init__()
        self.model, self.name, self.input_size = model, name, input_size
        self.head_name, self.head = _head(model)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (images.float() + 1) / 2
        if self.input_size and x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False)
        captured: list[torch.Tensor] = []
        handle = self.head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            logits = self.model((x - self.mean) / self.std)
        finally:
            handle.remove()
        return logits, captured[-1].flatten(1)

    def class_features(self, images: torch.Tensor, target: int) -> torch.Tensor:
        """g_y = w_y * phi: [B,D], the per-feature contributions to the target logit."""
        _, penultimate = self(images)
        return penultimate * self.head.weight[target]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted class indices [B]."""
        return self(images)[0].argmax(dim=1)


def load_classifier(spec: str, weights: str | Path, input_size: int = 224,
                    device: str | torch.device = "cpu") -> Classifier:
    """`spec` = "torchvision:<arch>", "timm:<arch>" or "biaslab:<head>", weights from the
    local file (or, for biaslab, folder) `weights`. A biaslab judge resizes to its own
    32 px and reads [-1, 1], so `input_size` does not apply to it."""
    family, _, arch = spec.partition(":")
    if family not in FAMILIES or not arch:
        raise ValueError(f"classifier {spec!r}: write torchvision:<arch>, timm:<arch> or biaslab:<head>, "
                         "e.g. torchvision:resnet50")
    if weights is None:
        raise FileNotFoundError(f"classifier {spec} needs local weights (classifier_weights / --classifier-weights)")
    if family == "biaslab":
        classifier = Classifier(_load_biaslab(arch, weights), f"{spec} ({Path(weights).name})", 0,
                                (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        return classifier.to(device)
    state = load_state_file(weights)
    model = _build(family, arch, None)
    head_name, head = _head(model)
    head_weight = state.get(f"{head_name}.weight")
    if head_weight is None:
        raise ValueError(f"{weights}: no {head_name}.weight; it does not hold a {spec} classifier")
    if head_weight.shape[0] != head.out_features:
        model = _build(family, arch, head_weight.shape[0])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match {spec}: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}) tensors"
        )
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = Classifier(model, f"{spec} ({Path(weights).name})", input_size,
                            cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
    log.info("classifier %s from %s: %d classes, %d-d features", spec, weights, classifier.num_classes,
             classifier.head.in_features)
    return classifier.to(device)


def reference_similarity(features: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Mean cosine of each row of `features` [N,D] to every row of `references` [K,D] -> [N]."""
    prototype = F.normalize(references.float(), dim=1).mean(dim=0)
    return F.normalize(features.float(), dim=1) @ prototype
