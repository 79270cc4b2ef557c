"""What an objective is, and the diffusion pieces every objective shares.

An objective says what the LoRA training loop (loop.py) learns; the loop does the rest.
It gives the loop:
- `config`: a `LoopConfig` subclass whose `weight(name)` weighs each loss in the total;
- `adapted_modules()`: private copies of the modules to train, each carrying our LoRA
  ({"unet": ...}, and "text_encoder" where the text encoder is trained too); the copies
  share the bundle's frozen weight tensors (`weight_sharing_copy`), so training holds one
  UNet's weights, not two;
- `batch()`: one micro-batch, drawn with the loop's generator;
- `losses(batch)`: every enabled loss of that micro-batch, unweighted, with graph;
- `warm_caches()`, `dataset_fingerprints()` (part of the run identity), `lora_metadata()`
  (header entries beside the loop's own), `method` and `loss_names` (recorded in the LoRA).

The loop binds itself to the objective before training (`bind`). Through it, and only
through it, the objective reaches the trained modules, the device, the RNG, the step,
autocast and the timers (`LoopServices`): whatever the loop does to them (wrapping,
placing, precision) the objective follows without knowing.

The shared pieces: VAE latents (the posterior cached per image, sampled with the loop's
RNG), text embeddings (cached per caption; through the trained text encoder, with graph,
when it carries a LoRA), noising at random timesteps, the UNet prediction and the decoded
generation of method.md section 1, step 3 (generation.py). The bundle is never mutated.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import itertools
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol

import torch

from .checkpoint import UNRECORDED
from .config import LoopConfig
from .generation import denoise_to_latent
from .lora import add_lora


class LoopServices(Protocol):
    """What an objective may use of the loop that runs it."""

    step: int  # optimizer steps completed
    generator: torch.Generator  # data order, noise, timesteps (saved in checkpoints)
    device: torch.device
    trainable: dict[str, torch.nn.Module]  # the modules of `adapted_modules()`, as the loop runs them

    def autocast(self) -> AbstractContextManager: ...

    def randn(self, shape) -> torch.Tensor: ...  # noise of a batch-sized draw (CPU, from `generator`)

    def randint(self, high: int, size) -> torch.Tensor: ...  # integers likewise

    def timed(self, name: str) -> AbstractContextManager: ...


def content_key(images: torch.Tensor) -> bytes:
    """A cache key of an image tensor's content."""
    return hashlib.blake2b(images.detach().cpu().numpy().tobytes(), digest_size=16).digest()


def unaugmented(dataset) -> Iterator[dict]:
    """Every item of `dataset` as loaded without augmentation (center crop, no flip)."""
    for index in range(len(dataset)):
        yield dataset.get(index, None)


def weight_sharing_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` whose parameters and buffers are the original's own tensors: it can take
    its own adapter layers, hooks and flags (train mode, gradient checkpointing) while the
    original stays as it was, and it costs no weight memory. Its shared weights are frozen
    (requires_grad False on both) and must never be changed in place (no LoRA merging)."""
    shared = itertools.chain(module.parameters(), module.buffers())
    return copy.deepcopy(module, memo={id(tensor): tensor for tensor in shared})


@contextlib.contextmanager
def decoder_checkpointing(vae, enabled: bool) -> Iterator[None]:
    """diffusers' per-block gradient checkpointing of `vae` for the decodes inside (the branch decodes
    with grad: at 512 px its activations rival the UNet's); the shared VAE is left as it was."""
    if not enabled or getattr(vae.decoder, "gradient_checkpointing", True):
        yield
        return
    vae.enable_gradient_checkpointing()
    try:
        yield
    finally:
        vae.disable_gradient_checkpointing()


class Objective:
    """The base of every objective: the contract's defaults and the shared diffusion pieces.
    `dataset`: the data trained on (its fingerprint goes into the run identity and the LoRA)."""

    method = ""
    loss_names: tuple[str, ...] = ()

    def __init__(self, bundle, dataset, config: LoopConfig):
        self.bundle, self.dataset, self.config = bundle, dataset, config
        self.loop: LoopServices | None = None
        self._latent_cache: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        self._text_cache: dict[str, torch.Tensor] = {}

    def bind(self, loop: LoopServices) -> None:
        self.loop = loop

    # ------------------------------------------------------------ the contract
    def adapted_modules(self) -> dict[str, torch.nn.Module]:
        """A private, weight-sharing copy of the UNet with LoRA on its attention projections (seeded
        by config.seed)."""
        c = self.config
        unet = weight_sharing_copy(self.bundle.unet)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            add_lora(unet, rank=c.rank, alpha=c.alpha)
        if c.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        return {"unet": unet}

    def batch(self) -> dict:
        raise NotImplementedError

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def warm_caches(self) -> None:
        """Fill the caches for every example as loaded without augmentation."""
        for item in unaugmented(self.dataset):
            self._cache_latent(item["pixel_values"])

    def dataset_fingerprints(self) -> dict[str, str]:
        """{name: fingerprint} of the data trained on."""
        return {"dataset": getattr(self.dataset, "fingerprint", UNRECORDED)}

    def lora_metadata(self) -> dict[str, str]:
        """The objective's own entries of the LoRA file's header."""
        return {}

    # ------------------------------------------------------ the loop's services
    @property
    def unet(self) -> torch.nn.Module:
        return self.loop.trainable["unet"]

    @functools.cached_property
    def unet_dtype(self) -> torch.dtype:
        """The trained UNet's dtype, read once: diffusers' `dtype` walks every submodule on each read (at
        SD 1.5 size, milliseconds per call)."""
        return self.unet.dtype

    @functools.cached_property
    def vae_dtype(self) -> torch.dtype:
        return self.bundle.vae.dtype

    @property
    def device(self) -> torch.device:
        return self.loop.device

    @property
    def generator(self) -> torch.Generator:
        return self.loop.generator

    # ------------------------------------------------------- diffusion pieces
    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents [B,4,h,w] of images [B,3,H,W] in [-1,1], sampled with the loop's RNG."""
        cached = [self._cache_latent(image) for image in pixels]
        mean, std = torch.cat([m for m, _ in cached]), torch.cat([s for _, s in cached])
        noise = self.loop.randn(mean.shape).to(self.device)
        config = self.bundle.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        return (mean + std * noise - shift) * config.scaling_factor

    def _cache_latent(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std [1,4,h,w] of the VAE posterior of one image [3,H,W], cached."""
        key = content_key(image)
        if key not in self._latent_cache:
            vae = self.bundle.vae
            with torch.no_grad():
                dist = vae.encode(image[None].to(self.device, self.vae_dtype)).latent_dist
            self._latent_cache[key] = (dist.mean.float(), dist.std.float())
        return self._latent_cache[key]

    def _tokens(self, texts: list[str]) -> torch.Tensor:
        tokenizer = self.bundle.tokenizer
        return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(self.device)

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings [B,77,D]. Through the trained text encoder (with graph) when the loop
        trains one; else the frozen one's, cached per caption and each encoded alone, so an
        embedding never depends on which captions happened to share its batch."""
        trained = self.loop.trainable.get("text_encoder")
        if trained is not None:
            with self.loop.autocast():
                return trained(self._tokens(texts))[0].to(self.unet_dtype)
        for text in texts:
            if text not in self._text_cache:
                with torch.no_grad():
                    self._text_cache[text] = self.bundle.text_encoder(self._tokens([text]))[0][0]
        return torch.stack([self._text_cache[t] for t in texts]).to(self.unet_dtype)

    def noised(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z0, noise, t, z_t) of images [B,3,H,W]: latents, noise and timesteps [B] drawn with the
        loop's RNG (in that order; batch-sized draws go through the loop, which slices them when several
        processes share the batch), z_t the scheduler's noised latents."""
        sched = self.bundle.scheduler
        z0 = self.latents(pixels)
        noise = self.loop.randn(z0.shape).to(self.device)
        t = self.loop.randint(sched.config.num_train_timesteps, (z0.shape[0],)).to(self.device)
        return z0, noise, t, sched.add_noise(z0, noise, t)

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The trained UNet's output at z_t [B,4,h,w], t [B], conditioning [B,77,D]."""
        return self.unet(z_t.to(self.unet_dtype), t, encoder_hidden_states=cond).sample

    def decoded_image(self, z_t: torch.Tensor, t: int, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """The decoded generation x0_hat [1,3,H,W] (about [-1,1]) from z_t [1,4,h,w] at timestep t,
        cond/uncond [1,77,D]; its graph reaches the LoRA through one UNet call (generation.py)."""
        c, vae, loop = self.config, self.bundle.vae, self.loop
        with loop.timed("denoise_branch"), loop.autocast():
            z_hat = denoise_to_latent(
                self.unet, self.bundle.scheduler, z_t.float(), t, cond, uncond,
                steps=c.denoise_steps, cfg=c.cfg, grad_mode=c.grad_mode, generator=self.generator,
            )
        with loop.timed("decode"), loop.autocast(), decoder_checkpointing(vae, c.gradient_checkpointing):
            shift = getattr(vae.config, "shift_factor", None) or 0.0
            return vae.decode((z_hat / vae.config.scaling_factor + shift).to(self.vae_dtype)).sample.float()

    def decoded_images(self, z_t: torch.Tensor, t: torch.Tensor,
                       cond: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """(b, x0_hat of example b) for each example of z_t [B,4,h,w] at t [B] with cond [B,77,D],
        unconditional = the empty caption (embedded now); each image made when asked for."""
        uncond = self.embed([""])
        return ((b, self.decoded_image(z_t[b : b + 1], int(t[b]), cond[b : b + 1], uncond)) for b in range(len(z_t)))
