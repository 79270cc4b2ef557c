"""Model loading, all offline: the embedded default, a diffusers folder, a single file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, SchedulerMixin, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from .tiny import build_tiny_components

CONFIG_DIR = Path(__file__).parent / "configs"
TOKENIZER_DIR = CONFIG_DIR / "clip_tokenizer"
DEFAULT_MODEL = "default"


@dataclass
class ModelBundle:
    """The frozen parts of an SD 1.x-family model plus where they came from.

    `scheduler` is the training (DDPM) noise schedule; samplers build their own from
    its config. `fingerprint` identifies the weights (recorded in LoRA metadata).
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: SchedulerMixin
    source: str
    fingerprint: str
    extras: dict = field(default_factory=dict)

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """Native image side in pixels (UNet sample size x VAE factor)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def pipeline(self) -> StableDiffusionPipeline:
        """A StableDiffusionPipeline sharing these modules (no copy, no safety checker)."""
        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def load_clip_tokenizer() -> CLIPTokenizer:
    """The CLIP BPE tokenizer (49408 tokens, 77 positions) from the files shipped here."""
    return CLIPTokenizer(
        str(TOKENIZER_DIR / "vocab.json"),
        str(TOKENIZER_DIR / "merges.txt"),
        model_max_length=77,
    )


def load_default_model(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> ModelBundle:
    """The embedded tiny model (see `tiny.py`)."""
    parts = build_tiny_components(seed=0)
    for name in ("unet", "vae", "text_encoder"):
        parts[name].requires_grad_(False).to(device=device, dtype=dtype)
    return ModelBundle(
        tokenizer=load_clip_tokenizer(),
        source=DEFAULT_MODEL,
        fingerprint=hashlib.sha256(b"scoft-tiny-seed-0").hexdigest()[:16],
        **parts,
    )
