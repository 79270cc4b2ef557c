"""Text-to-image sampling with or without a LoRA, from fixed per-image seeds.

Every image's starting noise is drawn on the CPU from its own seed, so a baseline run
and a LoRA run with the same seeds (on any device, in any batching) start from the
same latents. The bundle is never modified: a LoRA is merged into a copy of the UNet
and, when the file adapts the text encoder too (`lora_te_*` keys), a copy of it.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UNet2DConditionModel
from PIL import Image

from .lora_apply import apply_lora_file
from .models import ModelBundle
from .progress import OnStep

logger = logging.getLogger(__name__)

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
}



def seeds_for(prompts: list[str], seeds: list[int] | int) -> list[int]:
    """One seed per prompt: `seeds + i` for prompt i when `seeds` is an int, else the list as given."""
    if isinstance(seeds, int):
        return [seeds + i for i in range(len(prompts))]
    seeds = [int(seed) for seed in seeds]
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt or a single int")
    return seeds


def image_size(bundle: ModelBundle, size: int | tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) in pixels: the bundle's native side when `size` is None, a square for an int."""
    if size is None:
        size = bundle.resolution
    width, height = (size, size) if isinstance(size, int) else size
    factor = bundle.vae_scale_factor
    if width % factor or height % factor or width <= 0 or height <= 0:
        raise ValueError(f"image size {width}x{height} must be positive multiples of {factor}")
    return int(width), int(height)


def make_scheduler(bundle: ModelBundle, name: str):
    """A fresh sampling scheduler of kind `name` (a key of SCHEDULERS) from the bundle's schedule config."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler {name!r} is unknown; choose one of {sorted(SCHEDULERS)}")
    return SCHEDULERS[name].from_config(bundle.scheduler.config)


def initial_noise(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Generator]:
    """Standard-normal latents [1, C, h, w] (float32, CPU) from `seed`, and the generator that drew them."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn((1, *shape), generator=generator, dtype=torch.float32), generator


def lora_pipeline(bundle: ModelBundle, lora_path: str | os.PathLike | None, lora_strength: float = 1.0,
                  unet: UNet2DConditionModel | None = None, scheduler: str = "ddim"):
    """A diffusers pipeline of the bundle (or of `unet` instead of its UNet) with a fresh
    `scheduler`, carrying the LoRA file at `lora_strength`, merged per module the way
    ComfyUI's LoraLoader applies it (lora_apply.py) into copies of the modules it adapts,
    so neither the bundle nor `unet` ever changes."""
    parts = {"unet": bundle.unet if unet is None else unet, "scheduler": make_scheduler(bundle, scheduler)}
    if lora_path is not None:
        parts["unet"], parts["text_encoder"] = apply_lora_file(lora_path, lora_strength, parts["unet"],
                                                               bundle.text_encoder)
    pipe = dataclasses.replace(bundle, **parts).pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_batch(pipe, prompts: list[str], negative_prompt: str, size: tuple[int, int], steps: int, cfg: float,
              noise, generators, callback) -> torch.Tensor:
    """One pipeline call from given start latents (one per prompt, CPU-drawn per seed);
    `callback` is diffusers' callback_on_step_end. Returns float32 [B, H, W, 3] in 0..1 (CPU)."""
    width, height = size
    result = pipe(
        prompt=prompts,
        negative_prompt=[negative_prompt] * len(prompts),
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=cfg,
        latents=torch.cat(noise).to(device=pipe.unet.device, dtype=pipe.unet.dtype),
        generator=list(generators),
        output_type="pt",
        callback_on_step_end=callback,
    )
    return result.images.float().permute(0, 2, 3, 1).cpu()


def sample_tensor(
    bundle: ModelBundle,
    prompts: list[str],
    seeds: list[int] | int,
    lora_path: str | os.PathLike | None = None,
    lora_strength: float = 1.0,
    scheduler: str = "ddim",
    steps: int = 20,
    cfg: float = 7.5,
    size: int | tuple[int, int] | None = None,
    negative_prompt: str = "",
    on_step: OnStep | None = None,
    unet: UNet2DConditionModel | None = None,
    batch_size: int = 4,
) -> torch.Tensor:
    """Generate one image per (prompt, seed); returns float32 [N, H, W, 3] in 0..1 on the CPU.

    `lora_path`: a kohya/peft LoRA file, merged at `lora_strength` into a copy of the UNet
    (and of the text encoder when the file adapts it). `unet`: an in-memory UNet (e.g. a peft-adapted one being trained)
    used as is instead of the bundle's (`lora_strength` only scales `lora_path`).
    `on_step(step, total, logs)` is called after every denoising step,
    `total = steps x number of batches`.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps ({steps}) and batch_size ({batch_size}) must be >= 1")
    seed_list = seeds_for(prompts, seeds)
    width, height = image_size(bundle, size)
    factor = bundle.vae_scale_factor
    latent_shape = (bundle.unet.config.in_channels, height // factor, width // factor)
    pipe = lora_pipeline(bundle, lora_path, lora_strength, unet, scheduler)
    batches = [range(i, min(i + batch_size, len(prompts))) for i in range(0, len(prompts), batch_size)]
    total = steps * len(batches)
    outputs = []
    for batch_index, batch in enumerate(batches):
        noise, generators = zip(*(initial_noise(seed_list[i], latent_shape) for i in batch), strict=True)

        def report(_pipe, step_index, timestep, callback_kwargs, batch_index=batch_index):
            if on_step is not None:
                logs = {"timestep": int(timestep), "batch": batch_index + 1, "batches": len(batches)}
                on_step(batch_index * steps + step_index + 1, total, logs)
            return callback_kwargs

        outputs.append(run_batch(pipe, [prompts[i] for i in batch], negative_prompt, (width, height), steps, cfg,
                                 noise, generators, report))
    logger.info(
        "sampled %d images (%s, %d steps, cfg %s, %dx%d, lora %s @ %s)",
        len(prompts),
        scheduler,
        steps,
        cfg,
        width,
        height,
        lora_path,
        lora_strength,
    )
    return torch.cat(outputs)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[N, H, W, 3] floats in 0..1 -> RGB PIL images (rounded like diffusers' numpy_to_pil)."""
    array = (images.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(image) for image in array]


def sample(bundle: ModelBundle, prompts: list[str], seeds: list[int] | int, **options) -> list[Image.Image]:
    """`sample_tensor` (same options) as a list of RGB PIL images, one per prompt."""
    return to_pil(sample_tensor(bundle, prompts, seeds, **options))
