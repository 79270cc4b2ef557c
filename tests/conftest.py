"""Session-wide fixtures: tiny models are built once per test session."""

from __future__ import annotations

import logging

import pytest
import torch

torch.set_num_threads(2)
logging.getLogger("diffusers").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_bundle():
    """A random tiny SD-1.x model, 64 px (frozen, fp32, CPU). Tests must not mutate it."""
    from scoft_train.models import load_tiny_model

    return load_tiny_model()


@pytest.fixture(scope="session")
def tiny_diffusers_dir(tiny_bundle, tmp_path_factory):
    """The tiny model saved as a diffusers folder (safetensors, with tokenizer)."""
    folder = tmp_path_factory.mktemp("tiny_diffusers") / "tiny"
    tiny_bundle.pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_single_file(tiny_bundle, tmp_path_factory):
    """The tiny model's weights as an original-layout single-file .safetensors."""
    from scoft_train.ldm_layout import save_single_file

    path = tmp_path_factory.mktemp("tiny_single") / "tiny.safetensors"
    save_single_file(tiny_bundle, path)
    return path


@pytest.fixture(scope="session")
def lora_file(tiny_bundle, tmp_path_factory):
    """A kohya LoRA file for the tiny UNet (rank 4, alpha 4) with non-zero weights."""
    import copy

    from scoft_train.lora import add_lora, export_kohya

    unet = copy.deepcopy(tiny_bundle.unet)
    add_lora(unet, rank=4, alpha=4.0)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in (p for p in unet.parameters() if p.requires_grad):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return export_kohya(unet, tmp_path_factory.mktemp("lora") / "l.safetensors", {"method": "test"})
