"""The ablation's RS-Corrector rows: one latent prior per run, fitted on the CCUB working
copy (fair) against its negatives/ (stereotypical), then the held-out prompts sampled with
the correction on the base model (prior loss, direct loss, both) and on the FT+MPC LoRA
(both). Same prompts, seeds, sampler, steps and cfg as every other row."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..data import NEGATIVES_DIR
from ..models import ModelBundle
from ..rscorrector import Prior, fit_prior, sample_corrected
from ..sampling import lora_pipeline
from .world import RESOLUTION

# row name -> (w_prior, w_direct, on the FT+MPC LoRA)
RS_ROWS = {
    "RS-Corrector (prior)": (1.0, 0.0, False),
    "RS-Corrector (direct)": (0.0, 1.0, False),
    "RS-Corrector (both)": (1.0, 1.0, False),
    "FT+MPC + RS-Corrector": (1.0, 1.0, True),
}


def fit_ablation_prior(bundle: ModelBundle, ccub: Path, c) -> Prior:
    """The run's prior: CCUB images (fair) vs the negatives generated for them (stereotypical)."""
    return fit_prior(bundle, ccub, ccub / NEGATIVES_DIR, steps=c.rs_prior_steps, draws=c.rs_draws,
                     batch_size=c.rs_batch_size, seed=c.seed, max_timestep=c.rs_max_timestep, resolution=RESOLUTION)


def lora_unet(bundle: ModelBundle, lora_path: Path):
    """A copy of the bundle's UNet carrying the LoRA file, loaded exactly as `sample_tensor` loads it."""
    return lora_pipeline(bundle, lora_path).unet


def rs_samples(bundle: ModelBundle, prior: Prior, prompts: list[str], c, ft_mpc_lora: Path,
               device: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """{row: images [N, 3, H, W] in [-1, 1]} and {row: sampling wall seconds} for every RS row."""
    samples, seconds = {}, {}
    ft_unet = None
    for name, (w_prior, w_direct, on_lora) in RS_ROWS.items():
        if on_lora and ft_unet is None:
            ft_unet = lora_unet(bundle, ft_mpc_lora)
        lap = time.perf_counter()
        result = sample_corrected(bundle, prior, prompts, c.seed, steps=c.sample_steps, cfg=c.cfg, scheduler="ddim",
                                  last_k=c.rs_last_k, m_steps=c.rs_m_steps, eta=c.rs_eta, w_prior=w_prior,
                                  w_direct=w_direct, n_refs=c.rs_n_refs, batch_size=64,
                                  unet=ft_unet if on_lora else None)
        seconds[name] = time.perf_counter() - lap
        samples[name] = result.images.permute(0, 3, 1, 2).to(device) * 2 - 1
    return samples, seconds
