"""RS-Corrector (method.md, section 2): a latent prior fitted on fair vs stereotypical
images, and a sampler that corrects the latent during the last denoising steps.
No model weight changes; see prior.py and sampler.py for the method."""

from .encoder import LatentEncoder
from .imagesets import ImageSet, encode_latents, load_image_set
from .prior import Prior, ProjectorHead, fit_prior, load_prior
from .sampler import LATENT_FORMS, CorrectedSamples, Correction, sample_corrected

__all__ = [
    "LATENT_FORMS",
    "CorrectedSamples",
    "Correction",
    "ImageSet",
    "LatentEncoder",
    "Prior",
    "ProjectorHead",
    "encode_latents",
    "fit_prior",
    "load_image_set",
    "load_prior",
    "sample_corrected",
]
