"""SFSL evaluation of generated images (method.md, section 3, step 3).

- spurious rate, per classifier: the share of generated images it assigns to the
  target class (the prompts draw no class object, so every hit is driven by the
  spurious feature);
- similarity: mean cosine of the class-wise features (classifier.py) of each generated
  image to the references', under the first classifier, averaged over images;
- quality: mean TOPIQ-NR score when pyiqa and a local weights file exist, else skipped
  with the reason in `notes`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torchvision.transforms.functional as TF

from ..atomic import atomic_write_text
from ..imagefile import load_rgb
from .classifier import Classifier, reference_similarity
from .data import image_files
from .quality import topiq_scores

log = logging.getLogger(__name__)


@dataclass
class SFSLReport:
    images: int
    target_class: int
    spurious_rate: dict[str, float]
    similarity: float
    quality: float | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))
        return Path(path)


def load_images(folder: str | os.PathLike) -> list[torch.Tensor]:
    """Every image of `folder` as [3,H,W] in [0,1] (sizes may differ)."""
    files = image_files(folder)
    if not files:
        raise FileNotFoundError(f"no image files in {folder}")
    return [TF.to_tensor(load_rgb(path)) for path in files]


@torch.no_grad()
def evaluate_sfsl(
    generated: list[torch.Tensor],
    references: list[torch.Tensor],
    classifiers: list[Classifier],
    target_class: int,
    quality_weights: str | os.PathLike | None = None,
) -> SFSLReport:
    """Score generated images [3,H,W] in [0,1] against reference images (same form).

    `classifiers`: one or more; the first also gives the features of the similarity.
    """
    if not classifiers:
        raise ValueError("evaluation needs at least one classifier")
    for classifier in classifiers:
        if not 0 <= target_class < classifier.num_classes:
            raise ValueError(f"target class {target_class} is not a class of {classifier.name} "
                             f"({classifier.num_classes} classes)")
    device = classifiers[0].mean.device
    signed = [image[None].to(device) * 2 - 1 for image in generated]
    rates = {}
    for classifier in classifiers:
        hits = torch.cat([classifier.predict(image) for image in signed]) == target_class
        rates[classifier.name] = float(hits.float().mean())
    main = classifiers[0]
    refs = torch.cat([main.class_features(image[None].to(device) * 2 - 1, target_class) for image in references])
    gen = torch.cat([main.class_features(image, target_class) for image in signed])
    similarity = float(reference_similarity(gen, refs).mean())
    scores, note = topiq_scores([image.to(device) for image in generated], quality_weights)
    quality = None if scores is None else float(scores.mean())
    report = SFSLReport(len(generated), target_class, rates, similarity, quality, [note])
    log.info("SFSL eval: %d images, spurious rate %s, similarity %.4f, %s", len(generated), rates, similarity, note)
    return report
