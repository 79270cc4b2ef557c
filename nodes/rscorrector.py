"""RS-Corrector Fit and RS-Corrector Sampler: scoft_train.rscorrector <-> ComfyUI types.

The prior travels as SCOFT_RS_PRIOR (a scoft_train.rscorrector.Prior). No model weight
changes: the sampler corrects latents during the last denoising steps.
"""

from __future__ import annotations

import logging

import torch

from ..scoft_train.data import NEGATIVES_DIR
from ..scoft_train.rscorrector import fit_prior, sample_corrected
from ..scoft_train.sampling import SCHEDULERS
from .common import SCOFT_DATASET, SCOFT_MODEL, SEED_MAX, progress_callback, prompt_lines, tip
from .sampling import PROMPTS_INPUT

logger = logging.getLogger(__name__)

SCOFT_RS_PRIOR = "SCOFT_RS_PRIOR"
NEGATIVES_SOURCE = "dataset negatives"
IMAGES_SOURCE = "stereo_images input"


class RSCorrectorFit:
    DESCRIPTION = (
        "Fits the RS-Corrector latent prior: the dataset's images are the fair side, the stereotypical side is the "
        "dataset's negatives (the pretrained model's own renderings) or any image batch, e.g. the base model's "
        "generations for the same prompts. A small head on the model's own UNet features learns to separate them "
        "at every noise level; its held-out accuracy is in the summary."
    )
    CATEGORY = "SCoFT/rs-corrector"
    FUNCTION = "fit"
    RETURN_TYPES = (SCOFT_RS_PRIOR, "STRING")
    RETURN_NAMES = ("prior", "summary")
    OUTPUT_TOOLTIPS = (
        "The fitted prior, for RS-Corrector Sampler (tied to this model's fingerprint).",
        "Set sizes, steps and the held-out separation accuracy (balanced; 0.5 = chance).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (SCOFT_MODEL, tip("Model from Load SCoFT Model; its VAE encodes both sets, its UNet is the frozen encoder.")),
                "fair_dataset": (SCOFT_DATASET, tip("CCUB dataset whose images are the fair (anti-stereotypical) side.")),
                "stereo_source": ((NEGATIVES_SOURCE, IMAGES_SOURCE), tip(
                    f"'{NEGATIVES_SOURCE}': the images in the dataset's {NEGATIVES_DIR}/ folder (Generate SCoFT "
                    f"Negatives makes them); '{IMAGES_SOURCE}': the stereo_images batch.",
                    default=NEGATIVES_SOURCE,
                )),
                "steps": ("INT", tip("Head training steps (1..100000).", default=300, min=1, max=100_000)),
                "draws": ("INT", tip("Noisy versions of each image (random timestep, noise, flip), 1..1024.",
                                     default=16, min=1, max=1024)),
                "max_timestep": ("INT", tip(
                    "Noisiest DDPM timestep drawn while fitting (0..999); the sampler only asks the prior about the "
                    "last steps, so a lower value focuses the fit. 999 = every level.",
                    default=999, min=0, max=999,
                )),
                "seed": ("INT", tip("Seed of the split, noise and head initialisation.", default=0, min=0, max=SEED_MAX)),
            },
            "optional": {
                "stereo_images": ("IMAGE", tip(f"Stereotypical images, used when stereo_source is '{IMAGES_SOURCE}'.")),
            },
        }

    def fit(self, model, fair_dataset, stereo_source, steps, draws, max_timestep, seed, stereo_images=None):
        if stereo_source == IMAGES_SOURCE:
            if stereo_images is None:
                raise ValueError(f"stereo_source '{IMAGES_SOURCE}' needs the stereo_images input connected")
            stereo = stereo_images.permute(0, 3, 1, 2).float() * 2.0 - 1.0
        else:
            stereo = fair_dataset.root / NEGATIVES_DIR
        with torch.inference_mode(False), torch.enable_grad():
            prior = fit_prior(
                model, fair_dataset.root, stereo, steps=steps, draws=draws, seed=seed,
                max_timestep=max_timestep, resolution=fair_dataset.resolution, on_step=progress_callback(steps),
            )
        info = prior.info
        summary = (
            f"RS-Corrector prior: {info['fair_size']} fair ({info['fair']}) vs {info['stereo_size']} stereotypical "
            f"({info['stereo']}) images, "
            f"{steps} steps\nheld-out separation accuracy {prior.heldout_accuracy:.3f} (0.5 = chance)"
        )
        logger.info("%s", summary.replace("\n", "; "))
        return (prior, summary)


class RSCorrectorSampler:
    DESCRIPTION = (
        "Samples like SCoFT Sampler (same seeds, same start noise), but during the last K denoising steps the latent "
        "takes M gradient steps toward the prior's fair side (weight w_prior) and against stereotypical references "
        "noised to the same level (weight w_direct). K = 0 gives exactly the plain sampler's images."
    )
    CATEGORY = "SCoFT/rs-corrector"
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("One corrected image per prompt, [B, H, W, 3] in 0..1.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (SCOFT_MODEL, tip("Model from Load SCoFT Model (the prior must have been fitted on it).")),
                "prior": (SCOFT_RS_PRIOR, tip("Prior from RS-Corrector Fit.")),
                "prompts": PROMPTS_INPUT,
                "negative_prompt": ("STRING", tip("Negative prompt for every image; empty = unconditional.", default="")),
                "seed": ("INT", tip(f"Noise seed of the first image; image i uses seed + i (0..{SEED_MAX}).",
                                    default=0, min=0, max=SEED_MAX)),
                "steps": ("INT", tip("Denoising steps (2..1000).", default=20, min=2, max=1000)),
                "cfg": ("FLOAT", tip("Classifier-free guidance scale (0..30).", default=7.5, min=0.0, max=30.0, step=0.1)),
                "scheduler": (tuple(SCHEDULERS), tip("Sampling scheduler.")),
                "last_k": ("INT", tip("Correct the latent during the last K steps (0 = plain sampling; at most steps - 1).",
                                      default=4, min=0, max=999)),
                "m_steps": ("INT", tip("Gradient steps M on the latent per corrected step (0..100).", default=2, min=0, max=100)),
                "eta": ("FLOAT", tip("Step size: RMS change of the latent per gradient step (0..1).",
                                     default=0.05, min=0.0, max=1.0, step=0.005)),
                "w_prior": ("FLOAT", tip("Weight of the prior loss (pull toward the fair side); 0 = off.",
                                         default=1.0, min=0.0, max=100.0, step=0.05)),
                "w_direct": ("FLOAT", tip("Weight of the direct contrastive loss against fair/stereotypical references; 0 = off.",
                                          default=1.0, min=0.0, max=100.0, step=0.05)),
                "n_refs": ("INT", tip("Fair and stereotypical references drawn per image for the direct loss (1..32).",
                                      default=4, min=1, max=32)),
            }
        }

    def sample(self, model, prior, prompts, negative_prompt, seed, steps, cfg, scheduler, last_k, m_steps, eta,
               w_prior, w_direct, n_refs):
        lines = prompt_lines(prompts)
        if not lines:
            raise ValueError("prompts is empty: write at least one prompt, one per line")
        result = sample_corrected(
            model, prior, lines, seed, steps=steps, cfg=cfg, scheduler=scheduler, last_k=last_k, m_steps=m_steps,
            eta=eta, w_prior=w_prior, w_direct=w_direct, n_refs=n_refs, negative_prompt=negative_prompt,
            on_step=progress_callback(steps),
        )
        return (result.images,)
