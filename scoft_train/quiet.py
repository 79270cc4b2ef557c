"""Keep the command line to our own lines: known third-party noise, silenced by name.

Called once by the CLI before any heavy import (`-v` skips it and shows everything).
Each entry below is a message a user saw between our lines that says nothing about
their run; errors from these libraries still show. Noise that one call of ours
triggers is silenced at that call instead (torchvision's `pretrained` deprecation, in
features.LPIPSDistance).
"""

from __future__ import annotations

import logging

# loggers whose INFO/WARNING lines are noise for our users, only errors kept
NOISY_LOGGERS = (
    # "Failed to load CPU gemm_4bit_forward from kernels-community": bitsandbytes (pulled in
    # by pyiqa) probes for an optional kernel package at import time
    "bitsandbytes",
    # "No LoRA keys associated to CLIPTextModel found with the prefix='text_encoder'": a
    # UNet-only LoRA loaded through diffusers' pipeline loader
    "diffusers",
)


def quiet_third_party() -> None:
    """Silence the known noise of diffusers, transformers, huggingface_hub and bitsandbytes."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # transformers' "Loading weights" bar for every from_pretrained, even a 36-tensor model
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
