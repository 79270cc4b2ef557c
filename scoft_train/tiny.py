"""The embedded default: a tiny SD-1.x-architecture model built from a seed.

Same module types and key layout as Stable Diffusion 1.x (UNet2DConditionModel with
cross-attention, AutoencoderKL with four blocks, CLIPTextModel with the real CLIP
vocabulary), just narrow: UNet ~0.8M parameters, 64 px images, 8x8x4 latents.
It needs no download, so the demo and the tests run anywhere.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

TINY_RESOLUTION = 64
TINY_TEXT_DIM = 32


def tiny_unet_config() -> dict:
    return dict(
        sample_size=TINY_RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def tiny_vae_config() -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=TINY_RESOLUTION,
    )


def tiny_text_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def sd_scheduler_config() -> dict:
    """The DDPM training schedule of SD 1.x (scaled-linear betas, 1000 steps)."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )


def build_tiny_components(seed: int = 0) -> dict:
    """Randomly initialised tiny unet, vae, text_encoder and scheduler, fixed by `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_unet_config())
        vae = AutoencoderKL(**tiny_vae_config())
        text_encoder = CLIPTextModel(tiny_text_config())
    return dict(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        scheduler=DDPMScheduler(**sd_scheduler_config()),
    )
