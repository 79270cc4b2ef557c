"""Architecture of the world model: Stable Diffusion 1.x module types, sized for 32 px.

VAE 32x32x3 -> 8x8x4 (three blocks, factor 4), UNet2DConditionModel with
cross-attention on 8x8 latents (~1.7M parameters), CLIPTextModel with the full CLIP
vocabulary (49408 rows, so the standard tokenizer works) and a 64-wide hidden state,
and a depth ControlNet made from the UNet. The DDPM schedule is SD 1.x's.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ..tiny import sd_scheduler_config
from .world import RESOLUTION

TEXT_DIM = 64
LATENT_SIDE = RESOLUTION // 4
CONTROLNET_EMBEDDING_CHANNELS = (16, 32, 32)  # two stride-2 convs: depth 32 px -> 8x8


def vae_config() -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=RESOLUTION,
    )


def unet_config() -> dict:
    return dict(
        sample_size=LATENT_SIDE,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(40, 80),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def text_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=TEXT_DIM,
        intermediate_size=4 * TEXT_DIM,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def build_world(seed: int) -> dict:
    """Freshly initialised unet, vae, text_encoder (train mode) and the DDPM scheduler."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = dict(
            unet=UNet2DConditionModel(**unet_config()),
            vae=AutoencoderKL(**vae_config()),
            text_encoder=CLIPTextModel(text_config()),
        )
    return dict(modules, scheduler=DDPMScheduler(**sd_scheduler_config()))


def build_controlnet(unet: UNet2DConditionModel, seed: int) -> ControlNetModel:
    """A depth ControlNet initialised from the world UNet's encoder (zero convs at zero)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=CONTROLNET_EMBEDDING_CHANNELS, conditioning_channels=3
        )
