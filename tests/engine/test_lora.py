"""LoRA adapters: the zero-init invariant, freezing, checkpoints, kohya export read back by diffusers."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from peft import get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from scoft_train.lora import (
    ADAPTER_NAME,
    add_lora,
    export_kohya,
    load_lora_state_dict,
    lora_layers,
    lora_state_dict,
    read_lora_metadata,
)
from scoft_train.models import load_tiny_model
from scoft_train.sampling import sample_tensor

RANK, ALPHA = 4, 8.0
PROMPTS = ["a woman in front of a palace", "a bowl of noodles"]
SAMPLE_ARGS = dict(seeds=7, steps=4, cfg=5.0)


def unet_output(unet, seed: int = 0) -> torch.Tensor:
    """UNet noise prediction [1, 4, 8, 8] for fixed random inputs."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(latents, torch.tensor([500]), context).sample


def randomize_lora(unet, seed: int = 1, std: float = 0.2) -> None:
    """Give every LoRA A/B weight small random values, as if trained."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in (p for p in unet.parameters() if p.requires_grad):
            param.copy_(torch.randn(param.shape, generator=generator) * std)


@pytest.fixture(scope="module")
def trained_unet(tiny_bundle):
    """A copy of the tiny UNet with a rank-4, alpha-8 LoRA holding non-zero weights. Do not mutate."""
    unet = copy.deepcopy(tiny_bundle.unet)
    add_lora(unet, rank=RANK, alpha=ALPHA)
    randomize_lora(unet)
    return unet


@pytest.fixture(scope="module")
def exported(trained_unet, tmp_path_factory):
    metadata = {"method": "scoft", "preset": "FT+MPC", "loss_weights": {"ldm": 0.7, "mem": 0.3}, "steps": 12}
    return export_kohya(trained_unet, tmp_path_factory.mktemp("lora") / "scoft.safetensors", metadata, RANK, ALPHA)


def test_fresh_adapter_changes_nothing(tiny_bundle):
    unet = copy.deepcopy(tiny_bundle.unet)
    before = unet_output(unet)
    add_lora(unet, rank=RANK, alpha=ALPHA)
    layers = lora_layers(unet)
    assert len(layers) == 32  # 4 attention blocks x (attn1, attn2) x (q, k, v, out)
    assert all(torch.count_nonzero(layer.lora_B[ADAPTER_NAME].weight) == 0 for layer in layers.values())
    assert all(torch.count_nonzero(layer.lora_A[ADAPTER_NAME].weight) > 0 for layer in layers.values())
    assert torch.equal(unet_output(unet), before)


def test_only_lora_params_require_grad(tiny_bundle):
    unet = copy.deepcopy(tiny_bundle.unet)
    unet.requires_grad_(True)
    add_lora(unet, rank=RANK, alpha=ALPHA)
    trainable = [name for name, param in unet.named_parameters() if param.requires_grad]
    frozen = [name for name, param in unet.named_parameters() if not param.requires_grad]
    assert len(trainable) == 64
    assert all((".lora_A." in name or ".lora_B." in name) and f".{ADAPTER_NAME}." in name for name in trainable)
    assert len(frozen) == len(list(tiny_bundle.unet.parameters()))
    assert not any(isinstance(module, LoraLayer) for module in tiny_bundle.unet.modules())


def test_unknown_init_is_refused(tiny_bundle):
    with pytest.raises(ValueError, match="init"):
        add_lora(copy.deepcopy(tiny_bundle.unet), init="zeros")


def test_peft_state_dict_round_trip(tiny_bundle, trained_unet):
    state = lora_state_dict(trained_unet)
    assert len(state) == 64 and all(".lora_A.weight" in k or ".lora_B.weight" in k for k in state)
    fresh = copy.deepcopy(tiny_bundle.unet)
    add_lora(fresh, rank=RANK, alpha=ALPHA)
    assert not torch.allclose(unet_output(fresh), unet_output(trained_unet))
    load_lora_state_dict(fresh, state)
    assert torch.equal(unet_output(fresh), unet_output(trained_unet))
    state.pop(next(iter(state)))
    with pytest.raises(ValueError, match="1 missing"):
        load_lora_state_dict(fresh, state)


def test_kohya_keys_and_real_alpha(exported, trained_unet):
    tensors = load_file(exported)
    stems = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in tensors}
    assert len(stems) == 32 and len(tensors) == 96
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in stems
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0" in stems
    for stem in stems:
        assert set(tensors) >= {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"}
        assert tensors[f"{stem}.alpha"].item() == ALPHA
        assert tensors[f"{stem}.lora_down.weight"].shape[0] == RANK
        assert tensors[f"{stem}.lora_up.weight"].shape[1] == RANK
    layer = lora_layers(trained_unet)["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    down = tensors["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"]
    assert torch.equal(down, layer.lora_A[ADAPTER_NAME].weight)


def test_export_refuses_mismatched_rank(trained_unet, tmp_path):
    with pytest.raises(ValueError, match="rank=4"):
        export_kohya(trained_unet, tmp_path / "x.safetensors", {}, rank=8, alpha=ALPHA)
    assert not list(tmp_path.iterdir())


def test_metadata_round_trip(exported):
    metadata = read_lora_metadata(exported)
    assert metadata["method"] == "scoft"
    assert metadata["preset"] == "FT+MPC"
    assert json.loads(metadata["loss_weights"]) == {"ldm": 0.7, "mem": 0.3}
    assert metadata["steps"] == "12"
    assert metadata["ss_network_dim"] == str(RANK)
    assert float(metadata["ss_network_alpha"]) == ALPHA
    assert metadata["scoft_format_version"] == "1"
    assert all(isinstance(value, str) for value in metadata.values())


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_diffusers_loads_every_key(exported, trained_unet):
    fresh = load_tiny_model()
    pipe = fresh.pipeline()
    records = _Records()
    diffusers_logger = logging.getLogger("diffusers")
    old_level = diffusers_logger.level
    diffusers_logger.addHandler(records)
    diffusers_logger.setLevel(logging.WARNING)
    try:
        pipe.load_lora_weights(str(exported), adapter_name="loaded")
    finally:
        diffusers_logger.removeHandler(records)
        diffusers_logger.setLevel(old_level)
    assert [m for m in records.messages if not m.startswith("No LoRA keys associated to CLIPTextModel")] == []
    config = pipe.unet.peft_config["loaded"]
    assert (config.r, config.lora_alpha) == (RANK, ALPHA)
    ours = lora_state_dict(trained_unet)
    theirs = get_peft_model_state_dict(pipe.unet, adapter_name="loaded")
    assert set(theirs) == set(ours)
    assert all(torch.equal(theirs[key], ours[key]) for key in ours)
    assert torch.allclose(unet_output(pipe.unet), unet_output(trained_unet), atol=1e-6)


def test_file_images_match_in_memory_adapter(tiny_bundle, trained_unet, exported):
    fresh = load_tiny_model()
    in_memory = sample_tensor(tiny_bundle, PROMPTS, unet=trained_unet, **SAMPLE_ARGS)
    from_file = sample_tensor(fresh, PROMPTS, lora_path=exported, **SAMPLE_ARGS)
    baseline = sample_tensor(fresh, PROMPTS, **SAMPLE_ARGS)
    assert torch.allclose(from_file, in_memory, atol=1e-5)
    assert (from_file - baseline).abs().max() > 0.02


def test_alpha_sets_the_strength(tiny_bundle, exported, tmp_path):
    """Written as alpha = rank (what diffusers' convert_state_dict_to_kohya does) the LoRA is half as strong."""
    tensors = load_file(exported)
    as_rank = {key: torch.tensor(float(RANK)) if key.endswith(".alpha") else value for key, value in tensors.items()}
    wrong = tmp_path / "alpha_is_rank.safetensors"
    save_file(as_rank, str(wrong))
    ours_full = sample_tensor(tiny_bundle, PROMPTS, lora_path=exported, **SAMPLE_ARGS)
    ours_half = sample_tensor(tiny_bundle, PROMPTS, lora_path=exported, lora_strength=0.5, **SAMPLE_ARGS)
    wrong_full = sample_tensor(tiny_bundle, PROMPTS, lora_path=wrong, **SAMPLE_ARGS)
    assert (wrong_full - ours_full).abs().max() > 0.02
    assert torch.allclose(wrong_full, ours_half, atol=1e-5)
