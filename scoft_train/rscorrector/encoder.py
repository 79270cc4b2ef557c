"""The frozen encoder under the RS-Corrector prior: the model's own UNet down + mid path.

Why the UNet and not a separate small conv net: the UNet's down/mid path is already
trained (in a real SD model) to read latents at every noise level, told which level
through its timestep embedding, so a head on its features can separate fair from
stereotypical content at each level without learning to denoise; it costs no extra
weights in the prior file (which then only makes sense for this model, hence the
fingerprint check); and at sampling time its gradient with respect to the latent is
the gradient of a network that sees latents the way the denoiser does. The price is
one down/mid forward and backward per correction step (about half a UNet call).

Conditioning is the empty prompt, the same for fitting and sampling, so the prior
judges the image content, not the caption.
"""

from __future__ import annotations

import torch

from ..models import ModelBundle


class LatentEncoder:
    """Pooled features of noisy latents from the bundle's frozen UNet down + mid blocks.

    Call with latents [N, C, h, w] in the variance-preserving form (the DDPM schedule's
    `add_noise` output, scaled VAE latents at t = 0) and timesteps [N] (0..T-1); returns
    float32 [N, D]: the spatial mean of every down block's output and of the mid block's,
    concatenated (D = sum(block_out_channels) + block_out_channels[-1]).
    Gradients flow to the latents only; the UNet's weights stay frozen.
    """

    def __init__(self, bundle: ModelBundle):
        self.unet = bundle.unet
        config = self.unet.config
        if config.class_embed_type is not None or config.addition_embed_type is not None:
            raise ValueError(
                f"{bundle.source}: the UNet has class/addition embeddings ({config.class_embed_type}, "
                f"{config.addition_embed_type}); the RS-Corrector encoder supports SD 1.x/2.x UNets only"
            )
        tokenizer = bundle.tokenizer
        ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(self.unet.device)
        with torch.no_grad():
            self.context = bundle.text_encoder(ids)[0].to(self.unet.dtype)

    @property
    def dim(self) -> int:
        channels = self.unet.config.block_out_channels
        return int(sum(channels) + channels[-1])

    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        unet = self.unet
        context = self.context  # on the UNet's device, in its dtype (diffusers walks every submodule for `dtype`)
        sample = latents.to(context.device, context.dtype)
        context = context.expand(sample.shape[0], -1, -1)
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timesteps.to(context.device)))
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        sample = unet.conv_in(sample)
        pooled = []
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, _ = block(hidden_states=sample, temb=emb, encoder_hidden_states=context)
            else:
                sample, _ = block(hidden_states=sample, temb=emb)
            pooled.append(sample.mean(dim=(2, 3)))
        if getattr(unet.mid_block, "has_cross_attention", False):
            sample = unet.mid_block(sample, emb, encoder_hidden_states=context)
        else:
            sample = unet.mid_block(sample, emb)
        pooled.append(sample.mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1).float()
