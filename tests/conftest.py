"""Session-wide fixtures: tiny models are built once per test session."""

from __future__ import annotations

import logging

import pytest
import torch

torch.set_num_threads(2)
logging.getLogger("diffusers").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_bundle():
    """The embedded tiny SD-1.x model (frozen, fp32, CPU). Tests must not mutate it."""
    from scoft_train.models import load_default_model

    return load_default_model()
