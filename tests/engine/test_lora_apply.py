"""Applying LoRA files the way ComfyUI's LoraLoader does: W + strength * alpha/rank * up @ down
per module, checked against peft's own (unmerged) forward as the reference model, for
uniform alpha, per-module alpha, mixed ranks, a conv (LoCon) module and text-encoder keys;
and every file that cannot apply is refused by name."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import save_file

from scoft_train.lora_apply import apply_lora_file
from scoft_train.sampling import sample_tensor

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0"
# module path -> (rank, alpha): per-module alpha and mixed ranks, a 3x3 conv (LoCon) and a 1x1 conv
UNET_MODULES = {f"{ATTN}.attn1.to_q": (4, 2.0), f"{ATTN}.attn2.to_k": (2, 8.0), f"{ATTN}.attn1.to_out.0": (8, 8.0),
                "conv_in": (3, 1.5), "down_blocks.0.attentions.0.proj_in": (2, 4.0)}
TE_MODULES = {"encoder.layers.0.self_attn.q_proj": (4, 1.0), "encoder.layers.1.mlp.fc1": (2, 6.0)}


def kohya_name(prefix: str, path: str) -> str:
    return prefix + ("text_model." + path if prefix == "lora_te_" and not path.startswith("text_model.") else path).replace(".", "_")


def lora_tensors(model, modules: dict, prefix: str, seed: int, alphas: bool = True) -> dict:
    """Random kohya tensors for `modules` of `model` (conv down weights keep their kernel)."""
    generator, tensors = torch.Generator().manual_seed(seed), {}
    named = dict(model.named_modules())
    for path, (rank, alpha) in modules.items():
        weight = named[path].weight
        down_shape = (rank, *weight.shape[1:]) if weight.dim() == 4 else (rank, weight.shape[1])
        up_shape = (weight.shape[0], rank, 1, 1) if weight.dim() == 4 else (weight.shape[0], rank)
        name = kohya_name(prefix, path)
        tensors[f"{name}.lora_down.weight"] = torch.randn(down_shape, generator=generator) * 0.3
        tensors[f"{name}.lora_up.weight"] = torch.randn(up_shape, generator=generator) * 0.3
        if alphas:
            tensors[f"{name}.alpha"] = torch.tensor(alpha)
    return tensors


def peft_reference(model, modules: dict, tensors: dict, prefix: str, strength: float):
    """A copy of `model` with a peft adapter of per-module rank/alpha holding the same weights
    (up scaled by `strength`): peft's unmerged forward, an independent implementation."""
    reference = copy.deepcopy(model)
    patterns = {path: rank for path, (rank, _) in modules.items()}
    config = LoraConfig(r=1, lora_alpha=1, target_modules=list(modules),
                        rank_pattern={f"^{p}$": r for p, r in patterns.items()},
                        alpha_pattern={f"^{p}$": a for p, (_, a) in modules.items()})
    inject_adapter_in_model(config, reference, adapter_name="ref")
    state = {}
    for path in modules:
        name = kohya_name(prefix, path)
        state[f"{path}.lora_A.weight"] = tensors[f"{name}.lora_down.weight"]
        state[f"{path}.lora_B.weight"] = tensors[f"{name}.lora_up.weight"] * strength
    result = set_peft_model_state_dict(reference, state, adapter_name="ref")
    assert not result.unexpected_keys
    return reference.eval()


def unet_out(unet) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(latents, torch.tensor([500]), context).sample


def te_out(text_encoder) -> torch.Tensor:
    with torch.no_grad():
        return text_encoder(torch.tensor([[49406, 320, 1125, 49407] + [49407] * 4]))[0]


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_per_module_alpha_mixed_ranks_and_conv_apply_like_the_reference(tiny_bundle, tmp_path, strength):
    unet_tensors = lora_tensors(tiny_bundle.unet, UNET_MODULES, "lora_unet_", seed=1)
    te_tensors = lora_tensors(tiny_bundle.text_encoder, TE_MODULES, "lora_te_", seed=2)
    path = tmp_path / "mixed.safetensors"
    save_file({**unet_tensors, **te_tensors}, str(path))
    unet_before = unet_out(tiny_bundle.unet)
    unet, text_encoder = apply_lora_file(path, strength, tiny_bundle.unet, tiny_bundle.text_encoder)
    ref_unet = peft_reference(tiny_bundle.unet, UNET_MODULES, unet_tensors, "lora_unet_", strength)
    ref_te = peft_reference(tiny_bundle.text_encoder, TE_MODULES, te_tensors, "lora_te_", strength)
    effect = (unet_out(ref_unet) - unet_before).abs().max()
    assert effect > 0.05
    assert (unet_out(unet) - unet_out(ref_unet)).abs().max() < 1e-4 * max(1.0, float(effect))
    assert torch.allclose(te_out(text_encoder), te_out(ref_te), atol=1e-4)
    assert (te_out(text_encoder) - te_out(tiny_bundle.text_encoder)).abs().max() > 0.01
    assert torch.equal(unet_out(tiny_bundle.unet), unet_before)  # the bundle is untouched


def test_uniform_alpha_and_missing_alpha_match_the_reference(tiny_bundle, tmp_path):
    uniform = {path: (4, 4.0) for path in UNET_MODULES}
    tensors = lora_tensors(tiny_bundle.unet, uniform, "lora_unet_", seed=3, alphas=False)  # no .alpha: alpha = rank
    path = tmp_path / "uniform.safetensors"
    save_file(tensors, str(path))
    unet, text_encoder = apply_lora_file(path, 1.0, tiny_bundle.unet, tiny_bundle.text_encoder)
    assert text_encoder is tiny_bundle.text_encoder  # a UNet-only file leaves the text encoder alone
    reference = peft_reference(tiny_bundle.unet, uniform, tensors, "lora_unet_", 1.0)
    assert torch.allclose(unet_out(unet), unet_out(reference), atol=1e-4)


def test_sampling_with_a_mixed_file_equals_the_merged_reference_model(tiny_bundle, tmp_path):
    tensors = lora_tensors(tiny_bundle.unet, UNET_MODULES, "lora_unet_", seed=4)
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    args = dict(seeds=5, steps=3, cfg=5.0)
    reference = peft_reference(tiny_bundle.unet, UNET_MODULES, tensors, "lora_unet_", 0.8)
    expected = sample_tensor(tiny_bundle, ["a bowl of noodles"], unet=reference, **args)
    got = sample_tensor(tiny_bundle, ["a bowl of noodles"], lora_path=path, lora_strength=0.8, **args)
    assert torch.allclose(got, expected, atol=2e-4)
    assert (got - sample_tensor(tiny_bundle, ["a bowl of noodles"], **args)).abs().max() > 0.01


def _refused(tiny_bundle, path, match):
    with pytest.raises(ValueError, match=match) as error:
        apply_lora_file(path, 1.0, tiny_bundle.unet, tiny_bundle.text_encoder)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("kind, edit, match", [
    ("loha", lambda t: {"lora_unet_conv_in.hada_w1_a": torch.zeros(2, 2)}, "LoHa"),
    ("lokr", lambda t: {"lora_unet_conv_in.lokr_w1": torch.zeros(2, 2)}, "LoKr"),
    ("sdxl", lambda t: {**t, "lora_te1_text_model_x.lora_down.weight": torch.zeros(2, 2)}, "SDXL"),
    ("nan", lambda t: {**t, next(iter(t)): torch.full_like(next(iter(t.values())), float("nan"))}, "NaN or infinite"),
    ("unknown", lambda t: {"lora_unet_no_such_module.lora_down.weight": torch.zeros(2, 32),
                           "lora_unet_no_such_module.lora_up.weight": torch.zeros(32, 2)}, "names no module"),
    ("sd2", lambda t: {f"lora_unet_{ATTN.replace('.', '_')}_attn2_to_k.lora_down.weight": torch.zeros(2, 64),
                       f"lora_unet_{ATTN.replace('.', '_')}_attn2_to_k.lora_up.weight": torch.zeros(32, 2)},
     "another model"),
    ("half", lambda t: {next(iter(t)): next(iter(t.values()))}, "lacks its up weight"),
    ("junk", lambda t: {"model.diffusion_model.x": torch.zeros(1)}, "no layout read here"),
])
def test_files_that_cannot_apply_are_refused_by_name(tiny_bundle, tmp_path, kind, edit, match):
    base = lora_tensors(tiny_bundle.unet, {"conv_in": (2, 2.0)}, "lora_unet_", seed=5)
    path = tmp_path / f"{kind}.safetensors"
    save_file(edit(base), str(path))
    _refused(tiny_bundle, path, match)


def test_headers_say_what_a_file_is(tiny_bundle, tmp_path):
    tensors = lora_tensors(tiny_bundle.unet, {"conv_in": (2, 2.0)}, "lora_unet_", seed=6)
    sdxl = tmp_path / "sdxl.safetensors"
    save_file(tensors, str(sdxl), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    _refused(tiny_bundle, sdxl, "another model family.*sdxl_base_v1-0")
    checkpoint = tmp_path / "step_000010.safetensors"
    save_file({"lora.x.lora_A.weight": torch.zeros(2, 2)}, str(checkpoint), metadata={"format": "scoft-checkpoint-1"})
    _refused(tiny_bundle, checkpoint, "training checkpoint")


def test_damaged_files_are_named(tiny_bundle, tmp_path):
    path = tmp_path / "half_downloaded.safetensors"
    save_file(lora_tensors(tiny_bundle.unet, UNET_MODULES, "lora_unet_", seed=7), str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _refused(tiny_bundle, path, "truncated or corrupt")
    huge = tmp_path / "huge_header.safetensors"
    huge.write_bytes((2**62).to_bytes(8, "little") + b"{}")
    _refused(tiny_bundle, huge, "truncated or corrupt")
