"""Conversions between the engine's image forms and host image batches.

A host image batch (ComfyUI's IMAGE) is a float32 tensor [N, H, W, 3] in 0..1 on the
CPU; `sampling.sample_tensor` already returns that form. The dataset serves
[3, R, R] tensors in [-1, 1]; plots and grids are PIL images.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .sampling import to_pil

__all__ = ["dataset_preview", "pil_to_batch", "to_pil"]


def pil_to_batch(images: Image.Image | list[Image.Image]) -> torch.Tensor:
    """RGB PIL image(s) of one size -> float32 [N, H, W, 3] in 0..1."""
    images = [images] if isinstance(images, Image.Image) else list(images)
    if not images:
        raise ValueError("pil_to_batch needs at least one image")
    sizes = sorted({image.size for image in images})
    if len(sizes) > 1:
        raise ValueError(f"images of one batch must share a size; got {', '.join(f'{w}x{h}' for w, h in sizes)}")
    arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
    return torch.from_numpy(np.stack(arrays))


def dataset_preview(dataset, limit: int = 16) -> torch.Tensor:
    """The first `limit` positives of a CCUB dataset as [N, R, R, 3] in 0..1 (center crop, no flip)."""
    if limit < 1:
        raise ValueError(f"preview limit must be >= 1, got {limit}")
    count = min(limit, len(dataset))
    pixels = torch.stack([dataset.get(index, None)["pixel_values"] for index in range(count)])
    return ((pixels.permute(0, 2, 3, 1).float() + 1.0) / 2.0).clamp(0.0, 1.0)
