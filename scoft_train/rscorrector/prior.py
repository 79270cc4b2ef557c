"""The RS-Corrector latent prior: a projector head on the frozen UNet encoder (encoder.py).

Fitting (method.md, section 2): both image sets are VAE-encoded once; every step draws
a class-balanced batch, noises each latent to a uniformly random DDPM timestep, and
trains the head with a prototype contrastive objective (ProxyNCA / InfoNCE with one
learned prototype per side): the embedding's cosine similarity to the fair and the
stereotypical prototype, over a temperature, is a two-way softmax whose cross-entropy
pulls each embedding to its own side's prototype and pushes it from the other's. The
same quantity is the sampler's prior loss (toward the fair prototype) and its score:
cos(fair) - cos(stereotypical), in [-2, 2], > 0 on the fair side.

A held-out split of the images (never seen in fitting) gives the balanced separation
accuracy (chance = 0.5), overall and per noise level, written into the file's header.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from ..atomic import atomic_save_safetensors
from ..models import ModelBundle
from ..progress import OnStep
from .encoder import LatentEncoder
from .imagesets import ImageSource, encode_latents, load_image_set

logger = logging.getLogger(__name__)

FORMAT = "scoft-rscorrector-prior"
FAIR, STEREO = 0, 1
EVAL_LEVELS = 10
EVAL_DRAWS = 4
MAX_REFS = 32


class ProjectorHead(nn.Module):
    """Encoder features [N, D] -> unit embeddings [N, P]; `prototypes` [2, P]: fair, stereotypical."""

    def __init__(self, in_dim: int, hidden: int = 256, out_dim: int = 64):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))
        self.prototypes = nn.Parameter(torch.randn(2, out_dim) * 0.1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(self.norm(features)), dim=1)

    def similarities(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarities [N, 2] of unit embeddings to the (fair, stereotypical) prototypes."""
        return embeddings @ F.normalize(self.prototypes, dim=1).T


@dataclass
class Prior:
    """A fitted prior: head, reference latents for the direct loss, header metadata.

    fair_refs / stereo_refs: clean scaled VAE latents [K, C, h, w] (float32, CPU).
    """

    head: ProjectorHead
    fair_refs: torch.Tensor
    stereo_refs: torch.Tensor
    info: dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return self.info["model_fingerprint"]

    @property
    def tau(self) -> float:
        return float(self.info["tau"])

    @property
    def heldout_accuracy(self) -> float:
        return float(self.info["heldout_accuracy"])

    def embed(self, encoder: LatentEncoder, latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Unit embeddings [N, P] of VP-noisy latents [N, C, h, w] at timesteps [N]."""
        return self.head(encoder(latents, timesteps).to(_head_device(self.head)))

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[N, 2] (fair, stereotypical) logits: prototype similarities over tau."""
        return self.head.similarities(embeddings) / self.tau

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """cos(fair) - cos(stereotypical) [N] in [-2, 2] of unit embeddings [N, P]; > 0 = fair side."""
        similarity = self.head.similarities(embeddings)
        return similarity[:, FAIR] - similarity[:, STEREO]

    def score(self, bundle: ModelBundle, latents: torch.Tensor, timesteps: torch.Tensor | int = 0) -> torch.Tensor:
        """`scores` (float32 [N], CPU) of VP-noisy latents [N, C, h, w] at timesteps (default 0: clean)."""
        timesteps = torch.as_tensor(timesteps).expand(latents.shape[0])
        with torch.inference_mode(False), torch.no_grad():
            return self.scores(self.embed(LatentEncoder(bundle), latents, timesteps)).cpu()

    def save(self, path: str | os.PathLike) -> Path:
        """Write head + reference latents as .safetensors, `info` as the header; atomic."""
        tensors = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        tensors.update({"refs.fair": self.fair_refs, "refs.stereo": self.stereo_refs})
        atomic_save_safetensors(tensors, path, metadata=self.info)
        logger.info("wrote RS-Corrector prior %s (held-out accuracy %s)", path, self.info["heldout_accuracy"])
        return Path(path)


def _head_device(head: nn.Module) -> torch.device:
    return next(head.parameters()).device


def load_prior(path: str | os.PathLike, bundle: ModelBundle | None = None, force: bool = False) -> Prior:
    """Read a prior file. With `bundle`, refuse one fitted on another model fingerprint
    (ValueError) unless `force`, and put the head on the bundle's device."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RS-Corrector prior {path} does not exist; make one with `rscorrector fit`")
    with safe_open(str(path), framework="pt") as handle:
        info = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if info.get("format") != FORMAT:
        raise ValueError(f"{path} is not an RS-Corrector prior (header format {info.get('format')!r}, want {FORMAT!r})")
    if bundle is not None and info["model_fingerprint"] != bundle.fingerprint:
        message = (f"{path} was fitted on model {info['model_fingerprint']} ({info.get('model_source')}), "
                   f"not on {bundle.fingerprint} ({bundle.source})")
        if not force:
            raise ValueError(message + "; fit a prior for this model, or force the load to use it anyway")
        logger.warning("%s; used anyway (forced)", message)
    state = {key.removeprefix("head."): value for key, value in tensors.items() if key.startswith("head.")}
    head = ProjectorHead(state["norm.weight"].shape[0], state["mlp.0.weight"].shape[0], state["mlp.2.weight"].shape[0])
    head.load_state_dict(state)
    if bundle is not None:
        expected = LatentEncoder(bundle).dim
        if expected != head.norm.weight.shape[0]:
            raise ValueError(f"{path}: head expects {head.norm.weight.shape[0]} encoder features, "
                             f"this model's encoder gives {expected}")
        head.to(bundle.device)
    head.requires_grad_(False).eval()
    return Prior(head, tensors["refs.fair"], tensors["refs.stereo"], info)


def spread(latents: torch.Tensor, count: int = MAX_REFS) -> torch.Tensor:
    """`count` latents evenly spaced through the set (all if fewer): folders are often sorted by
    culture or subject, so the first `count` would cover only the first few groups."""
    if len(latents) <= count:
        return latents
    return latents[torch.linspace(0, len(latents) - 1, count).round().long()]


def _split(count: int, heldout: float, generator: torch.Generator, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) index tensors; held-out gets round(heldout x count), at least 1."""
    if count < 2:
        raise ValueError(f"the {side} set has {count} image(s); a held-out split needs at least 2")
    order = torch.randperm(count, generator=generator)
    n_out = min(count - 1, max(1, round(heldout * count)))
    return order[n_out:], order[:n_out]


def _noised(bundle: ModelBundle, latents: torch.Tensor, timesteps: torch.Tensor, generator: torch.Generator):
    """DDPM add_noise of clean latents [N, C, h, w] at timesteps [N] with fresh noise from `generator`."""
    noise = torch.randn(latents.shape, generator=generator)
    return bundle.scheduler.add_noise(latents, noise, timesteps)


def heldout_accuracy(
    bundle: ModelBundle, prior: Prior, fair: torch.Tensor, stereo: torch.Tensor, max_timestep: int, seed: int = 0,
) -> dict[int, float]:
    """Balanced accuracy (chance 0.5) of score > 0 on clean latents fair/stereo [N, C, h, w],
    noised to EVAL_LEVELS timesteps evenly spaced in 0..max_timestep (EVAL_DRAWS noise draws
    each); {t: accuracy}."""
    levels = torch.linspace(0, max_timestep, EVAL_LEVELS).round().long()
    generator = torch.Generator().manual_seed(seed)
    encoder = LatentEncoder(bundle)
    correct = []
    for latents, side in ((fair, FAIR), (stereo, STEREO)):
        batch = latents.repeat(EVAL_LEVELS * EVAL_DRAWS, 1, 1, 1)
        timesteps = levels.repeat_interleave(EVAL_DRAWS * len(latents))
        noisy = _noised(bundle, batch, timesteps, generator)
        with torch.no_grad():
            scores = torch.cat([prior.scores(prior.embed(encoder, noisy[i:i + 256], timesteps[i:i + 256]))
                                for i in range(0, len(noisy), 256)]).cpu()
        correct.append(((scores > 0) == (side == FAIR)).float().view(EVAL_LEVELS, -1).mean(dim=1))
    return {int(t): float(a + b) / 2 for t, a, b in zip(levels, *correct)}


def _noisy_features(
    bundle: ModelBundle, encoder: LatentEncoder, latents: torch.Tensor, draws: int, max_timestep: int,
    generator: torch.Generator, chunk: int = 256,
) -> torch.Tensor:
    """Encoder features [N x draws, D] of `draws` noisy versions of each latent [N, C, h, w]:
    a DDPM timestep uniform in 0..max_timestep, fresh noise, random horizontal flip."""
    batch = latents.repeat_interleave(draws, dim=0)
    flip = torch.rand(batch.shape[0], generator=generator) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
    timesteps = torch.randint(max_timestep + 1, (batch.shape[0],), generator=generator)
    noisy = _noised(bundle, batch, timesteps, generator)
    with torch.no_grad():
        return torch.cat([encoder(noisy[i:i + chunk], timesteps[i:i + chunk])
                          for i in range(0, len(noisy), chunk)]).to(bundle.device)


def fit_prior(
    bundle: ModelBundle,
    fair_images: ImageSource,
    stereo_images: ImageSource,
    steps: int = 500,
    draws: int = 32,
    batch_size: int = 64,
    lr: float = 1e-3,
    tau: float = 0.1,
    heldout: float = 0.25,
    hidden: int = 256,
    dim: int = 64,
    seed: int = 0,
    max_timestep: int | None = None,
    resolution: int | None = None,
    on_step: OnStep | None = None,
) -> Prior:
    """Fit the prior on a fair and a stereotypical image set (folders or [N,3,H,W] tensors in [-1,1]).

    Each training image is VAE-encoded once and seen as `draws` noisy versions (random
    timestep, noise, flip) whose encoder features are computed once; `steps` head
    updates then draw class-balanced batches of `batch_size` from those features.
    `max_timestep`: the noisiest DDPM timestep drawn (default: T - 1, every level); the
    sampler only queries the prior at its last K steps, so a lower bound focuses the fit.
    `heldout`: fraction of each set kept out of fitting for the accuracy in the header.
    `on_step(step, steps, {"loss": ..., "accuracy": ...})` after every step (batch accuracy).
    """
    if steps < 1 or draws < 1 or batch_size < 2 or not 0.0 < heldout < 1.0 or tau <= 0:
        raise ValueError(f"need steps >= 1 ({steps}), draws >= 1 ({draws}), batch_size >= 2 ({batch_size}), "
                         f"0 < heldout < 1 ({heldout}), tau > 0 ({tau})")
    total = bundle.scheduler.config.num_train_timesteps
    max_timestep = total - 1 if max_timestep is None else max_timestep
    if not 0 <= max_timestep < total:
        raise ValueError(f"max_timestep {max_timestep} must lie in 0..{total - 1}")
    resolution = resolution or bundle.resolution
    sets = [load_image_set(source, resolution) for source in (fair_images, stereo_images)]
    with torch.inference_mode(False):
        latents = [encode_latents(bundle, image_set.pixels) for image_set in sets]
        generator = torch.Generator().manual_seed(seed)
        splits = [_split(len(z), heldout, generator, side) for z, side in zip(latents, ("fair", "stereotypical"))]
        encoder = LatentEncoder(bundle)
        features = [_noisy_features(bundle, encoder, z[train], draws, max_timestep, generator)
                    for z, (train, _) in zip(latents, splits)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = ProjectorHead(encoder.dim, hidden, dim).to(bundle.device)
        prior = Prior(head, spread(latents[FAIR]), spread(latents[STEREO]), {"tau": str(tau)})
        _train_head(prior, features, steps, batch_size, lr, generator, on_step)
        fair_out, stereo_out = (z[out] for z, (_, out) in zip(latents, splits))
        by_level = heldout_accuracy(bundle, prior, fair_out, stereo_out, max_timestep, seed)
    accuracy = sum(by_level.values()) / len(by_level)
    prior.info = {
        "format": FORMAT,
        "version": "1",
        "model_fingerprint": bundle.fingerprint,
        "model_source": bundle.source,
        "encoder": "unet-down-mid (empty prompt), spatial mean pooling",
        "fair": sets[FAIR].description,
        "fair_size": str(len(latents[FAIR])),
        "stereo": sets[STEREO].description,
        "stereo_size": str(len(latents[STEREO])),
        "heldout_fair": str(len(fair_out)),
        "heldout_stereo": str(len(stereo_out)),
        "steps": str(steps),
        "draws": str(draws),
        "max_timestep": str(max_timestep),
        "batch_size": str(batch_size),
        "lr": str(lr),
        "tau": str(tau),
        "seed": str(seed),
        "resolution": str(resolution),
        "heldout_accuracy": f"{accuracy:.4f}",
        "heldout_accuracy_by_timestep": json.dumps({str(t): round(a, 4) for t, a in by_level.items()}),
    }
    logger.info("RS-Corrector prior: %d fair / %d stereotypical images, %d steps, held-out balanced accuracy %.3f",
                len(latents[FAIR]), len(latents[STEREO]), steps, accuracy)
    return prior


def _train_head(prior: Prior, features: list[torch.Tensor], steps: int, batch_size: int, lr: float,
                generator: torch.Generator, on_step: OnStep | None) -> None:
    """AdamW on the prototype cross-entropy over class-balanced batches of cached features [M, D]."""
    head = prior.head
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr)
    half = batch_size // 2
    labels = torch.tensor([FAIR] * half + [STEREO] * half, device=features[FAIR].device)
    head.train()
    for step in range(1, steps + 1):
        batch = torch.cat([side[torch.randint(len(side), (half,), generator=generator)] for side in features])
        logits = prior.logits(head(batch))
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step, steps, {"loss": loss.item(), "accuracy": float((logits.argmax(1) == labels).float().mean())})
    head.requires_grad_(False).eval()
