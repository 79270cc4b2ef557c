"""Training loops of the bias-lab artefacts: VAE, denoiser (UNet + text encoder),
depth ControlNet, judge. Each loop takes fixed, pre-rendered tensors, runs `steps`
AdamW steps with a warm-up + cosine schedule, and returns its loss history.

Tensors: images [N, 3, 32, 32] in [-1, 1]; depth [N, 3, 32, 32] in [0, 1]; latents
as cached posterior mean/std [N, 4, 8, 8] (unscaled); token ids [N, 77].
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from ..progress import OnStep

log = logging.getLogger(__name__)

LOG_EVERY = 100
KL_WEIGHT = 1e-6
MIN_SNR_GAMMA = 5.0


def optimizer_and_schedule(params, lr: float, steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW without weight decay (unused embedding rows stay as initialised), 5% linear
    warm-up, then cosine to zero."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def run_steps(stage: str, steps: int, step_fn: Callable[[int], dict], on_step: OnStep | None) -> list[dict]:
    history = []
    for step in range(1, steps + 1):
        logs = {"stage": stage, "step": step, **step_fn(step)}
        history.append(logs)
        if step % LOG_EVERY == 0 or step == steps:
            log.info("%s step %d/%d: %s", stage, step, steps,
                     ", ".join(f"{k} {v:.4f}" for k, v in logs.items() if k.startswith("loss")))
        if on_step is not None:
            on_step(step, steps, logs)
    return history


def batch_indices(n: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(n, (batch,), generator=generator)


def train_vae(vae, images: torch.Tensor, steps: int, batch: int, lr: float, seed: int,
              on_step: OnStep | None = None) -> list[dict]:
    """L1 + MSE reconstruction of a posterior sample, plus a tiny KL term."""
    generator = torch.Generator().manual_seed(seed)
    vae.train().requires_grad_(True)
    optimizer, schedule = optimizer_and_schedule(vae.parameters(), lr, steps)

    def step_fn(_step: int) -> dict:
        x = images[batch_indices(len(images), batch, generator)]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(x.device)
        recon = vae.decode(z).sample
        l1, mse = (recon - x).abs().mean(), F.mse_loss(recon, x)
        loss = l1 + mse + KL_WEIGHT * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        return {"loss": loss.item(), "loss/l1": l1.item(), "loss/mse": mse.item()}

    history = run_steps("vae", steps, step_fn, on_step)
    vae.eval().requires_grad_(False)
    return history


@torch.no_grad()
def encode(vae, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std [N, 4, 8, 8] (unscaled) of images [N, 3, 32, 32]."""
    means, stds = [], []
    for start in range(0, len(images), batch):
        dist = vae.encode(images[start : start + batch]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def round_trip(vae, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """VAE-decoded posterior means [N, 3, 32, 32] in [-1, 1] (clamped)."""
    mean, _ = encode(vae, images, batch)
    return torch.cat([vae.decode(mean[i : i + batch]).sample for i in range(0, len(mean), batch)]).clamp(-1, 1)


def _noisy(scheduler, mean, std, scale, generator):
    z0 = (mean + std * torch.randn(mean.shape, generator=generator).to(mean.device)) * scale
    noise = torch.randn(z0.shape, generator=generator).to(z0.device)
    t = torch.randint(scheduler.config.num_train_timesteps, (len(z0),), generator=generator).to(z0.device)
    return scheduler.add_noise(z0, noise, t), noise, t


def _min_snr_mse(scheduler, prediction, noise, t) -> torch.Tensor:
    """Epsilon MSE with min-SNR-5 weighting (diffusers' compute_snr)."""
    snr = compute_snr(scheduler, t)
    weights = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
    per_example = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_example * weights).mean()


def train_denoiser(unet, text_encoder, scheduler, latents: tuple[torch.Tensor, torch.Tensor], token_ids: torch.Tensor,
                   empty_ids: torch.Tensor, scale: float, steps: int, batch: int, lr: float, cond_drop: float,
                   seed: int, on_step: OnStep | None = None) -> list[dict]:
    """UNet and text encoder trained jointly on cached latents; `cond_drop` of the
    captions are replaced by the empty prompt (for classifier-free guidance)."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = latents
    modules = (unet, text_encoder)
    for module in modules:
        module.train().requires_grad_(True)
    params = [p for module in modules for p in module.parameters()]
    optimizer, schedule = optimizer_and_schedule(params, lr, steps)

    def step_fn(_step: int) -> dict:
        index = batch_indices(len(mean), batch, generator)
        z_t, noise, t = _noisy(scheduler, mean[index], std[index], scale, generator)
        ids = token_ids[index].clone()
        drop = torch.rand(batch, generator=generator) < cond_drop
        ids[drop] = empty_ids
        prediction = unet(z_t, t, encoder_hidden_states=text_encoder(ids.to(z_t.device))[0]).sample
        loss = _min_snr_mse(scheduler, prediction, noise, t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        return {"loss": loss.item()}

    history = run_steps("denoiser", steps, step_fn, on_step)
    for module in modules:
        module.eval().requires_grad_(False)
    return history


def train_controlnet(controlnet, unet, scheduler, latents: tuple[torch.Tensor, torch.Tensor], depth: torch.Tensor,
                     embeddings: torch.Tensor, caption_index: torch.Tensor, empty_index: int, scale: float,
                     steps: int, batch: int, lr: float, cond_drop: float, seed: int,
                     on_step: OnStep | None = None) -> list[dict]:
    """The ControlNet learns, with the UNet frozen, to steer it to the depth map's layout.

    `embeddings`: [C, 77, D] text embeddings of the C distinct captions; example i uses
    row caption_index[i]; `empty_index` is the row of the empty prompt.
    """
    generator = torch.Generator().manual_seed(seed)
    mean, std = latents
    controlnet.train().requires_grad_(True)
    unet.eval().requires_grad_(False)
    optimizer, schedule = optimizer_and_schedule(controlnet.parameters(), lr, steps)

    def step_fn(_step: int) -> dict:
        index = batch_indices(len(mean), batch, generator)
        z_t, noise, t = _noisy(scheduler, mean[index], std[index], scale, generator)
        rows = caption_index[index].clone()
        rows[torch.rand(batch, generator=generator) < cond_drop] = empty_index
        context = embeddings[rows]
        down, mid = controlnet(z_t, t, encoder_hidden_states=context, controlnet_cond=depth[index], return_dict=False)
        prediction = unet(z_t, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid).sample
        loss = _min_snr_mse(scheduler, prediction, noise, t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        return {"loss": loss.item()}

    history = run_steps("controlnet", steps, step_fn, on_step)
    controlnet.eval().requires_grad_(False)
    return history


def train_judge(judge, images: torch.Tensor, labels: dict[str, torch.Tensor], steps: int, batch: int, lr: float,
                seed: int, on_step: OnStep | None = None) -> list[dict]:
    """Sum of the three heads' cross-entropies; light pixel-noise augmentation."""
    generator = torch.Generator().manual_seed(seed)
    judge.train().requires_grad_(True)
    optimizer, schedule = optimizer_and_schedule(judge.parameters(), lr, steps)

    def step_fn(_step: int) -> dict:
        index = batch_indices(len(images), batch, generator)
        x = images[index]
        x = x + 0.03 * torch.randn(x.shape, generator=generator).to(x.device)
        logits = judge(x)
        losses = {name: F.cross_entropy(logits[name], labels[name][index]) for name in logits}
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        return {"loss": loss.item(), **{f"loss/{k}": v.item() for k, v in losses.items()}}

    history = run_steps("judge", steps, step_fn, on_step)
    judge.eval().requires_grad_(False)
    return history
