"""The four SCoFT losses (method.md, section 1). Pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

CONTRASTIVE_FORMS = ("unbounded", "hinge")


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon) or the velocity (v-prediction)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r} (epsilon or v_prediction)")


def ldm_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_LDM: MSE between the UNet output and the diffusion target, both [B,4,h,w]."""
    return F.mse_loss(prediction.float(), target.float())


def memorization_loss(prediction: torch.Tensor, generic_prediction: torch.Tensor) -> torch.Tensor:
    """L_M: tie the culture-caption prediction to the (stop-grad) generic-caption one."""
    return F.mse_loss(prediction.float(), generic_prediction.detach().float())


def contrastive_loss(
    d_pos: torch.Tensor, d_neg: torch.Tensor | None, form: str = "unbounded", margin: float = 0.1
) -> torch.Tensor:
    """L_C for one example: d_pos [] minus the mean of d_neg [K] (K may be 0 or None).

    "unbounded" is the reference form (can go below zero); "hinge" is
    max(0, d_pos - mean d_neg + margin). With no negatives only d_pos counts.
    """
    if form not in CONTRASTIVE_FORMS:
        raise ValueError(f"unknown contrastive form {form!r}; choose one of {CONTRASTIVE_FORMS}")
    if d_neg is None or d_neg.numel() == 0:
        return d_pos
    gap = d_pos - d_neg.mean()
    return gap if form == "unbounded" else torch.clamp(gap + margin, min=0)
