"""The two image sets of the prior (fair, stereotypical): loaded from folders, encoded once.

A source is a CCUB folder (its images, validated by `load_ccub`), any other folder (the
images at its top level, e.g. a CCUB folder's `negatives/` or model generations, read by
`imagefile.load_rgb`), or a tensor of images [N, 3, H, W] in [-1, 1] (H, W multiples of
the VAE factor).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.transforms.functional as TF

from ..ccub_folder import METADATA_NAME, DatasetError, image_files
from ..data import load_ccub
from ..imagefile import ImageFileError, load_rgb
from ..models import ModelBundle

ImageSource = str | os.PathLike | torch.Tensor


@dataclass(frozen=True)
class ImageSet:
    """pixels: float32 [N, 3, H, W] in [-1, 1]; description: where they came from."""

    pixels: torch.Tensor
    description: str


def load_image_set(source: ImageSource, resolution: int) -> ImageSet:
    """Images of `source` (see module doc); folder images are resized (shorter side) and
    center-cropped to `resolution`, tensors are taken as they are."""
    if isinstance(source, torch.Tensor):
        if source.ndim != 4 or source.shape[1] != 3:
            raise ValueError(f"an image tensor must be [N, 3, H, W] in [-1, 1], got shape {tuple(source.shape)}")
        return ImageSet(source.detach().float().clone(), f"{source.shape[0]} images (tensor)")
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image set {folder} is not a folder; pass a CCUB folder or a folder of images")
    if (folder / METADATA_NAME).is_file():
        dataset = load_ccub(folder, resolution=resolution)
        pixels = torch.stack([dataset.get(i)["pixel_values"] for i in range(len(dataset))])
        return ImageSet(pixels, f"CCUB {folder}")
    files = image_files(folder)
    if not files:
        raise ValueError(f"{folder}: no image files at its top level")
    tensors, problems = [], []
    for path in files:
        try:
            tensors.append(_load_image(path, resolution))
        except ImageFileError as error:
            problems.append(str(error))
    if problems:
        raise DatasetError(folder, problems)
    return ImageSet(torch.stack(tensors), f"folder {folder}")


def _load_image(path: Path, resolution: int) -> torch.Tensor:
    """[3, R, R] in [-1, 1]: shorter side resized to R, center crop."""
    rgb = TF.center_crop(TF.resize(load_rgb(path), resolution, antialias=True), [resolution, resolution])
    return TF.to_tensor(rgb) * 2.0 - 1.0


def encode_latents(bundle: ModelBundle, pixels: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Scaled VAE posterior means float32 [N, C, H/f, W/f] of images [N, 3, H, W] in [-1, 1]."""
    vae = bundle.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    chunks = []
    with torch.no_grad():
        for start in range(0, pixels.shape[0], batch_size):
            batch = pixels[start:start + batch_size].to(vae.device, vae.dtype)
            mean = vae.encode(batch).latent_dist.mean.float()
            chunks.append((mean - shift) * vae.config.scaling_factor)
    return torch.cat(chunks).cpu()
