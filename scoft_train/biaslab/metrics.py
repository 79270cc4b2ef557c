"""Image-set metrics of the ablation that do not need the judge's verdicts.

Images are float tensors [N, 3, 32, 32] in [-1, 1]. Pixel distance = RMSE in 0..1
intensity units (a mean over the 3 x 32 x 32 values).

- memorization: share of samples whose nearest CCUB training image is nearer than
  `COPY_THRESHOLD`. Generated images are VAE-decoded, so a copy can only come back as
  blurred as the VAE draws it: the references are the CCUB images after a VAE round
  trip. Calibration on the shipped world (RMSE to the nearest round-tripped CCUB image):
  a decoded posterior sample of a CCUB image (a copy) sits below 0.01; a fresh authentic
  render of the same cultures and concepts (also round-tripped) sits at a median of 0.09,
  and only ~1% of them fall below 0.036. `ablate` re-measures both and reports them.
- diversity: mean pairwise pixel distance among the samples of one prompt, averaged
  over prompts.
- KID: torchmetrics' KernelInceptionDistance with a scorer's embedding as the feature
  extractor (no Inception weights exist offline), against held-out authentic renders
  after the same VAE round trip the generated images had (like with like).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn
from torchmetrics.image.kid import KernelInceptionDistance

from .training import encode

COPY_THRESHOLD = 0.03


def pixel_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RMSE in 0..1 units between every image of a [N, ...] and of b [M, ...]: [N, M]."""
    fa, fb = (a.flatten(1) + 1) / 2, (b.flatten(1) + 1) / 2
    return (torch.cdist(fa, fb) ** 2 / fa.shape[1]).clamp_min(0).sqrt()


def nearest_distance(samples: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Distance [N] from each sample to its nearest reference image."""
    return pixel_distances(samples, references).min(dim=1).values


def memorization_rate(samples: torch.Tensor, training: torch.Tensor, threshold: float = COPY_THRESHOLD) -> float:
    return float((nearest_distance(samples, training) < threshold).float().mean())


def diversity(samples: torch.Tensor, groups: list[int]) -> float:
    """Mean over groups (one per prompt, `groups[i]` = prompt of sample i) of the mean
    pairwise distance between different samples of that group."""
    means = []
    for group in sorted(set(groups)):
        members = samples[torch.tensor([g == group for g in groups])]
        if len(members) < 2:
            continue
        distances = pixel_distances(members, members)
        n = len(members)
        means.append(float(distances.sum() / (n * (n - 1))))
    return sum(means) / len(means) if means else float("nan")


class _Embedding(nn.Module):
    """torchmetrics' feature extractor: images [B, 3, H, W] in [0, 1] -> `embed` of them in [-1, 1]."""

    def __init__(self, embed: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.embed = embed

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images.float() * 2 - 1)


def kid(embed: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor, subsets: int = 50,
        seed: int = 0) -> tuple[float, float]:
    """(mean, std) of KID between real and fake images [N, 3, H, W] in [-1, 1], in the
    feature space of `embed` (images in [-1, 1] -> [N, D])."""
    subset_size = min(100, len(real), len(fake))
    with warnings.catch_warnings():  # it warns that it keeps every feature: a few hundred 128-d vectors here
        warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance`")
        metric = KernelInceptionDistance(feature=_Embedding(embed), subsets=subsets, subset_size=subset_size)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        metric.update((real + 1) / 2, real=True)
        metric.update((fake + 1) / 2, real=False)
        mean, std = metric.compute()
    return float(mean), float(std)


def copy_calibration(vae, ccub_images: torch.Tensor, training: torch.Tensor, fresh: torch.Tensor,
                     seed: int) -> dict[str, float]:
    """Where copies and non-copies fall against COPY_THRESHOLD, measured to `training` (the
    round-tripped CCUB images): decoded posterior samples of the CCUB images (copies) and
    fresh authentic renders (round-tripped, non-copies)."""
    mean, std = encode(vae, ccub_images)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        copies = vae.decode(mean + std * torch.randn(mean.shape, generator=generator).to(mean.device)).sample.clamp(-1, 1)
    return {
        "copy_threshold": COPY_THRESHOLD,
        "decoded_ccub_sample_median": float(nearest_distance(copies, training).median()),
        "fresh_authentic_median": float(nearest_distance(fresh, training).median()),
        "fresh_authentic_flagged": memorization_rate(fresh, training),
    }
