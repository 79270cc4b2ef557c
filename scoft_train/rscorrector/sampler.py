"""RS-Corrector sampling: the plain sampler, with the latent corrected before the last K steps.

The denoising loop is diffusers' StableDiffusionPipeline called exactly as
`sampling.sample_tensor` calls it (same scheduler, per-seed CPU noise, batching);
the correction lives in its `callback_on_step_end`, which may replace `latents`. With
K = 0 (or both weights 0) the callback returns the latents untouched, so the output is
bit for bit the plain sampler's.

Correction: the latent the pipeline hands to each of the last K denoising steps (the
output of the step before) takes M steps of size eta against the gradient of
    w_prior  * CE(prior logits, fair)                              (a) prior loss
  + w_direct * -log(sum_pos exp(s/tau) / sum_pos+neg exp(s/tau))   (b) direct loss
where s are cosine similarities, in the prior's embedding space, to `n_refs` fair
(positive) and `n_refs` stereotypical (negative) reference latents noised to the same
timestep. "Size eta" is literal: each step moves the latent by eta RMS per element
(normalised gradient), the same meaning on any model. K <= steps - 1 (the first
step's input is pure noise). Model and prior weights never change.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from ..models import ModelBundle
from ..sampling import OnStep, image_size, initial_noise, make_scheduler, run_batch, seeds_for
from .encoder import LatentEncoder
from .prior import FAIR, Prior

logger = logging.getLogger(__name__)

# How each sampler's latents relate to the VP form the prior was fitted on:
# "vp": x_t = sqrt(a) z0 + sqrt(1-a) e as is; "sigma": x = z0 + sigma e, VP form x / sqrt(1 + sigma^2).
LATENT_FORMS = {"ddim": "vp", "euler": "sigma", "dpmpp_2m": "vp"}
REF_SEED_OFFSET = 7919


@dataclass(frozen=True)
class CorrectedSamples:
    """images: float32 [N, H, W, 3] in 0..1 (CPU); latents: the final latents [N, C, h, w] the VAE decoded."""

    images: torch.Tensor
    latents: torch.Tensor


@dataclass(frozen=True)
class Correction:
    """Correction settings: the last `last_k` step inputs take `m_steps` steps of size `eta`
    on w_prior x (a) + w_direct x (b), with `n_refs` references per side per image."""

    last_k: int = 4
    m_steps: int = 2
    eta: float = 0.05
    w_prior: float = 1.0
    w_direct: float = 1.0
    n_refs: int = 4

    def __post_init__(self):
        if min(self.last_k, self.m_steps, self.eta, self.w_prior, self.w_direct) < 0 or self.n_refs < 1:
            raise ValueError(f"last_k, m_steps, eta, w_prior, w_direct must be >= 0 and n_refs >= 1; got {self}")

    @property
    def active(self) -> bool:
        return self.last_k > 0 and self.m_steps > 0 and self.eta > 0 and (self.w_prior > 0 or self.w_direct > 0)


@dataclass
class _Corrector:
    """One batch's correction: encoder, prior, settings, each image's references with their noise."""

    encoder: LatentEncoder
    prior: Prior
    settings: Correction
    alphas: torch.Tensor  # DDPM alphas_cumprod [T]
    refs: list[tuple[torch.Tensor, ...]]  # per image: fair [K,C,h,w], its noise, stereo, its noise

    def __call__(self, latents: torch.Tensor, t: int, scale: float) -> tuple[torch.Tensor, dict]:
        """Corrected latents (shape/dtype of `latents`, at timestep t; `scale` x latents = VP form)
        and logs: the batch's mean prior score before and after."""
        settings = self.settings
        timesteps = torch.full((latents.shape[0],), t, dtype=torch.long)
        targets = self._reference_embeddings(t) if settings.w_direct else None
        fair = torch.full((latents.shape[0],), FAIR, device=self.alphas.device)
        z, before = latents.detach().float(), None
        with torch.enable_grad():
            for _ in range(settings.m_steps):
                z.requires_grad_(True)
                embeddings = self.prior.embed(self.encoder, z * scale, timesteps)
                logits = self.prior.logits(embeddings)
                before = self.prior.scores(embeddings).detach() if before is None else before
                loss = settings.w_prior * F.cross_entropy(logits, fair, reduction="sum")
                if targets is not None:
                    loss = loss + settings.w_direct * _direct_loss(embeddings, *targets, self.prior.tau).sum()
                (grad,) = torch.autograd.grad(loss, z)
                rms = grad.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
                z = (z - settings.eta * grad / rms).detach()
        with torch.no_grad():
            after = self.prior.scores(self.prior.embed(self.encoder, z * scale, timesteps))
        return z.to(latents.dtype), {"rs/score_before": float(before.mean()), "rs/score_after": float(after.mean())}

    def _reference_embeddings(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [B, K, P] of each image's fair and stereotypical references noised to t."""
        a = self.alphas[t]
        sides = []
        for side in (0, 2):
            per_image = []
            for refs in self.refs:
                noisy = a.sqrt() * refs[side] + (1 - a).sqrt() * refs[side + 1]
                with torch.no_grad():
                    per_image.append(self.prior.embed(self.encoder, noisy, torch.full((len(noisy),), t)))
            sides.append(torch.stack(per_image))
        return sides[0], sides[1]


def _direct_loss(embeddings: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, tau: float):
    """InfoNCE [B] of embeddings [B, P] with positives / negatives [B, K, P] (unit vectors)."""
    pos = torch.einsum("bp,bkp->bk", embeddings, positives) / tau
    neg = torch.einsum("bp,bkp->bk", embeddings, negatives) / tau
    return torch.logsumexp(torch.cat([pos, neg], dim=1), dim=1) - torch.logsumexp(pos, dim=1)


def _draw_refs(pools: list[torch.Tensor], n_refs: int, seed: int, device) -> tuple[torch.Tensor, ...]:
    """For one image (fixed by its seed): n_refs fair and n_refs stereotypical latents from the
    pools [K, C, h, w] (all of a pool if smaller), each followed by one noise draw per latent."""
    generator = torch.Generator().manual_seed(seed + REF_SEED_OFFSET)
    out = []
    for pool in pools:
        chosen = pool[torch.randperm(len(pool), generator=generator)[:n_refs]].float()
        out += [chosen.to(device), torch.randn(chosen.shape, generator=generator).to(device)]
    return tuple(out)


def _noise_level(scheduler, form: str, index: int) -> tuple[int, float]:
    """(DDPM timestep, factor to the VP form) of the latent that denoising step `index` receives."""
    t = int(round(float(scheduler.timesteps[index])))
    if form == "sigma":
        sigma = float(scheduler.sigmas[index])
        return t, (1.0 + sigma**2) ** -0.5
    return t, 1.0


def sample_corrected(
    bundle: ModelBundle,
    prior: Prior,
    prompts: list[str],
    seeds: list[int] | int,
    steps: int = 20,
    cfg: float = 7.5,
    scheduler: str = "ddim",
    last_k: int = 4,
    m_steps: int = 2,
    eta: float = 0.05,
    w_prior: float = 1.0,
    w_direct: float = 1.0,
    fair_latents: torch.Tensor | None = None,
    stereo_latents: torch.Tensor | None = None,
    n_refs: int = 4,
    size: int | tuple[int, int] | None = None,
    negative_prompt: str = "",
    batch_size: int = 4,
    unet: UNet2DConditionModel | None = None,
    on_step: OnStep | None = None,
) -> CorrectedSamples:
    """One corrected image per (prompt, seed); same seeds -> same start noise as `sample_tensor`.

    fair_latents / stereo_latents: clean scaled VAE latents [K, C, h, w] for the direct
    loss (default: the prior's references). `unet`: an in-memory UNet (e.g. with a LoRA)
    to denoise with; the prior's encoder is always the bundle's own UNet.
    `on_step(step, steps x batches, logs)` after every denoising step; corrected steps
    add logs rs/score_before and rs/score_after (mean prior score of the batch).
    Works when called under torch.inference_mode (it leaves it for autograd).
    """
    settings = Correction(last_k, m_steps, eta, w_prior, w_direct, n_refs)
    form = LATENT_FORMS.get(scheduler)
    if form is None:
        raise ValueError(f"scheduler {scheduler!r} has no RS-Corrector support; choose one of {sorted(LATENT_FORMS)}")
    if steps < 1 or batch_size < 1 or last_k > steps - 1:
        raise ValueError(f"need steps >= 1 ({steps}), batch_size >= 1 ({batch_size}) and last_k <= steps - 1 "
                         f"(last_k {last_k}: the first step's input is pure noise)")
    if prior.fingerprint != bundle.fingerprint:
        logger.warning("the prior was fitted on model %s, sampling with %s", prior.fingerprint, bundle.fingerprint)
    seed_list = seeds_for(prompts, seeds)
    width, height = image_size(bundle, size)
    factor = bundle.vae_scale_factor
    latent_shape = (bundle.unet.config.in_channels, height // factor, width // factor)
    sampling_unet = bundle.unet if unet is None else unet
    batches = [range(i, min(i + batch_size, len(prompts))) for i in range(0, len(prompts), batch_size)]
    with torch.inference_mode(False):
        pools = [prior.fair_refs if fair_latents is None else fair_latents.clone(),
                 prior.stereo_refs if stereo_latents is None else stereo_latents.clone()]
        encoder = LatentEncoder(bundle) if settings.active else None
        alphas = bundle.scheduler.alphas_cumprod.to(bundle.device)
        pipe = dataclasses.replace(bundle, unet=sampling_unet, scheduler=make_scheduler(bundle, scheduler)).pipeline()
        pipe.set_progress_bar_config(disable=True)
        images, finals = [], []
        for batch_index, batch in enumerate(batches):
            noise, generators = zip(*(initial_noise(seed_list[i], latent_shape) for i in batch), strict=True)
            corrector = None
            if encoder is not None:
                refs = [_draw_refs(pools, n_refs, seed_list[i], bundle.device) for i in batch]
                corrector = _Corrector(encoder, prior, settings, alphas, refs)
            step_end = _StepEnd(corrector, form, steps, settings.last_k, batch_index, len(batches), on_step)
            images.append(run_batch(pipe, [prompts[i] for i in batch], negative_prompt, (width, height), steps, cfg,
                                    noise, generators, step_end))
            finals.append(step_end.final)
    logger.info("sampled %d images with RS-Corrector (%s, %d steps, cfg %s, %s)", len(prompts), scheduler, steps, cfg,
                settings if settings.active else "inactive")
    return CorrectedSamples(torch.cat(images), torch.cat(finals))


@dataclass
class _StepEnd:
    """The pipeline's callback_on_step_end: corrects the inputs of the last K steps, keeps the
    final latents, reports progress."""

    corrector: _Corrector | None
    form: str
    steps: int
    last_k: int
    batch_index: int
    batches: int
    on_step: OnStep | None
    final: torch.Tensor | None = None

    def __call__(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        logs = {"timestep": int(timestep), "batch": self.batch_index + 1, "batches": self.batches}
        next_index = step_index + 1
        if self.corrector is not None and self.steps - self.last_k <= next_index < self.steps:
            t, scale = _noise_level(pipe.scheduler, self.form, next_index)
            callback_kwargs["latents"], extra = self.corrector(callback_kwargs["latents"], t, scale)
            logs.update(extra)
        if next_index == self.steps:
            self.final = callback_kwargs["latents"].detach().float().cpu()
        if self.on_step is not None:
            self.on_step(self.batch_index * self.steps + next_index, self.steps * self.batches, logs)
        return callback_kwargs
