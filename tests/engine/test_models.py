"""Offline model loading: diffusers folder, single file, bundled configs, LDM layout."""

from __future__ import annotations

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from scoft_train.atomic import atomic_save_safetensors
from scoft_train.ldm_layout import (
    SUPPORTED_FAMILIES,
    TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    detect_sd_version,
    ldm_state_dict,
    save_single_file,
)
from scoft_train.models import BUNDLED_CONFIGS, load_clip_tokenizer, load_model
from scoft_train.tiny import build_tiny_components

PARTS = ("unet", "vae", "text_encoder")


def assert_same_weights(left, right) -> None:
    for name in PARTS:
        a = left[name].state_dict() if isinstance(left, dict) else getattr(left, name).state_dict()
        b = right[name].state_dict() if isinstance(right, dict) else getattr(right, name).state_dict()
        assert a.keys() == b.keys(), name
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key}"


def generate(bundle) -> torch.Tensor:
    pipe = bundle.pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        "a red house",
        num_inference_steps=3,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(7),
        output_type="pt",
    ).images


def test_folder_and_single_file_load_the_same_model(tiny_bundle, tiny_diffusers_dir, tiny_single_file):
    from_folder = load_model(tiny_diffusers_dir)
    from_file = load_model(tiny_single_file, config=tiny_diffusers_dir)

    assert_same_weights(from_folder, tiny_bundle)
    assert_same_weights(from_file, tiny_bundle)
    images = generate(from_folder)
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()
    assert torch.equal(images, generate(from_file))
    assert from_file.extras["layout"] == "single_file" and from_folder.extras["layout"] == "diffusers"


def test_single_file_weights_come_from_the_file_not_the_config_folder(tmp_path, tiny_bundle, tiny_diffusers_dir):
    other = build_tiny_components(seed=1)
    tensors = ldm_state_dict(other)
    # Real SD 1.x files also carry the CLIP position_ids buffer.
    tensors[TEXT_PREFIX + "embeddings.position_ids"] = torch.arange(77)[None]
    path = tmp_path / "seed1.safetensors"
    atomic_save_safetensors(tensors, path)
    stored = load_file(str(path))

    bundle = load_model(path, config=tiny_diffusers_dir)

    assert_same_weights(bundle, other)
    token_embedding = bundle.text_encoder.get_input_embeddings().weight
    assert torch.equal(token_embedding, stored[TEXT_PREFIX + "embeddings.token_embedding.weight"])
    assert not torch.equal(token_embedding, tiny_bundle.text_encoder.get_input_embeddings().weight)


def open_clip_layout(text_encoder) -> dict[str, torch.Tensor]:
    """A CLIPTextModel in the original SD 2.x OpenCLIP layout (cond_stage_model.model.*)."""
    sd = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    out = {
        "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        "positional_embedding": sd["embeddings.position_embedding.weight"],
        "ln_final.weight": sd["final_layer_norm.weight"],
        "ln_final.bias": sd["final_layer_norm.bias"],
        "text_projection": torch.eye(text_encoder.config.hidden_size),
    }
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for i in range(text_encoder.config.num_hidden_layers):
        hf, oc = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            for old, new in names.items():
                out[f"{oc}{new}.{kind}"] = sd[f"{hf}{old}.{kind}"]
            qkv = [sd[f"{hf}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{oc}attn.in_proj_{kind}"] = torch.cat(qkv)
    return {"cond_stage_model.model." + k: v for k, v in out.items()}


def test_open_clip_text_encoder_loads_from_the_file(tmp_path, tiny_diffusers_dir):
    other = build_tiny_components(seed=2)
    tensors = {k: v for k, v in ldm_state_dict(other).items() if not k.startswith("cond_stage_model.")}
    tensors.update(open_clip_layout(other["text_encoder"]))
    path = tmp_path / "openclip.safetensors"
    atomic_save_safetensors(tensors, path)

    assert_same_weights(load_model(path, config=tiny_diffusers_dir), other)


def test_bundle_is_frozen_typed_and_fingerprinted(tmp_path, tiny_diffusers_dir, tiny_single_file):
    bundle = load_model(
        tiny_single_file, config=tiny_diffusers_dir, dtype=torch.bfloat16, prediction_type="v_prediction"
    )

    for name in PARTS:
        module = getattr(bundle, name)
        assert not module.training
        assert all(not p.requires_grad and p.dtype == torch.bfloat16 for p in module.parameters()), name
    assert bundle.prediction_type == "v_prediction"
    again = load_model(tiny_single_file, config=tiny_diffusers_dir)
    assert again.fingerprint == bundle.fingerprint and len(bundle.fingerprint) == 16
    assert again.prediction_type == "epsilon"
    other = tmp_path / "seed1.safetensors"
    save_single_file(build_tiny_components(seed=1), other)
    assert load_model(other, config=tiny_diffusers_dir).fingerprint != bundle.fingerprint


def test_ldm_layout_round_trips_through_diffusers_converters(tiny_bundle):
    ldm = ldm_state_dict(tiny_bundle)
    back = {
        "unet": convert_ldm_unet_checkpoint(ldm, dict(tiny_bundle.unet.config)),
        "vae": convert_ldm_vae_checkpoint(ldm, dict(tiny_bundle.vae.config)),
        "text_encoder": {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(ldm).items()},
    }
    for name in PARTS:
        ref = getattr(tiny_bundle, name).state_dict()
        assert back[name].keys() == ref.keys(), name
        for key in ref:
            assert torch.equal(back[name][key], ref[key]), f"{name}.{key}"
    assert ldm[VAE_PREFIX + "encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)


def test_save_single_file_refuses_unmerged_adapters(tmp_path):
    from peft import LoraConfig

    parts = build_tiny_components(seed=0)
    parts["unet"].add_adapter(LoraConfig(r=2, target_modules=["to_q"]))
    with pytest.raises(ValueError, match="unmerged adapter"):
        save_single_file(parts, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def empty_parts(config_dir) -> dict:
    with init_empty_weights():
        return {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir, subfolder="unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir, subfolder="vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir, subfolder="text_encoder")),
        }


@pytest.mark.parametrize(
    ("name", "context", "text_keys"),
    [("sd15", 768, 196), ("sd21", 1024, 372)],  # 12 vs 23 CLIP layers of 16 tensors, + 4
)
def test_bundled_configs_map_to_the_original_layout(name, context, text_keys):
    parts = empty_parts(BUNDLED_CONFIGS[name])
    ldm = ldm_state_dict(parts)

    # The published SD 1.x/2.x checkpoints hold 686 UNet and 248 VAE tensors.
    assert sum(k.startswith(UNET_PREFIX) for k in ldm) == 686
    assert sum(k.startswith(VAE_PREFIX) for k in ldm) == 248
    assert sum(k.startswith(TEXT_PREFIX) for k in ldm) == text_keys
    assert ldm[UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape == (320, context)
    assert ldm[VAE_PREFIX + "decoder.mid.attn_1.proj_out.weight"].shape == (512, 512, 1, 1)
    for part, convert in (("unet", convert_ldm_unet_checkpoint), ("vae", convert_ldm_vae_checkpoint)):
        ref = parts[part].state_dict()
        back = convert(ldm, dict(parts[part].config))
        assert back.keys() == ref.keys(), part
        assert all(back[k].shape == ref[k].shape for k in ref), part
    assert detect_sd_version({k: tuple(v.shape) for k, v in ldm.items()}) == name


SD15_INPUT = UNET_PREFIX + "input_blocks.0.0.weight"
# Small stand-ins with the keys and shapes that mark each family in real single files.
OTHER_FAMILIES = {
    "an SDXL model (key conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight)": {
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (8, 4),
        "conditioner.embedders.1.model.token_embedding.weight": (8, 4),
        UNET_PREFIX + "label_emb.0.0.weight": (8, 4),
        SD15_INPUT: (8, 4, 3, 3),
        VAE_PREFIX + "encoder.conv_in.weight": (8, 3, 3, 3),
    },
    "an SDXL model (key conditioner.embedders.0.model.token_embedding.weight)": {  # the refiner
        "conditioner.embedders.0.model.token_embedding.weight": (8, 4),
        SD15_INPUT: (8, 4, 3, 3),
    },
    "an SD3/SD3.5 model (key model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight)": {
        UNET_PREFIX + "joint_blocks.0.x_block.attn.qkv.weight": (12, 4),
        UNET_PREFIX + "x_embedder.proj.weight": (4, 16, 2, 2),
        "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight": (8, 4),
        VAE_PREFIX + "encoder.conv_in.weight": (8, 3, 3, 3),
    },
    "a Flux model (key double_blocks.0.img_attn.qkv.weight)": {
        "double_blocks.0.img_attn.qkv.weight": (12, 4),
        "single_blocks.0.linear1.weight": (12, 4),
        "img_in.weight": (4, 64),
    },
    "an SD 1.x/2.x inpainting model (the UNet takes 9 input channels, text-to-image takes 4)": {
        SD15_INPUT: (8, 9, 3, 3),
        VAE_PREFIX + "encoder.conv_in.weight": (8, 3, 3, 3),
        TEXT_PREFIX + "embeddings.token_embedding.weight": (8, 4),
    },
    "a LoRA, not a full model (key lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight)": {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (2, 8),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (8, 2),
    },
}


@pytest.mark.parametrize("family", sorted(OTHER_FAMILIES))
def test_other_model_families_are_named_before_any_completeness_check(tmp_path, family):
    path = tmp_path / "model.safetensors"
    save_file({key: torch.zeros(shape) for key, shape in OTHER_FAMILIES[family].items()}, str(path))
    expected = f"{path} is {family}; {SUPPORTED_FAMILIES}"
    for config in (None, "sd15"):
        with pytest.raises(ValueError) as caught:
            load_model(path, config=config)
        assert str(caught.value) == expected
    assert "SD 1.x and SD 2.x text-to-image models" in SUPPORTED_FAMILIES


def test_an_sd15_file_without_its_text_encoder_is_called_incomplete(tmp_path, tiny_bundle):
    path = tmp_path / "unet_vae_only.safetensors"
    save_file({k: v for k, v in ldm_state_dict(tiny_bundle).items() if not k.startswith("cond_stage_model.")},
              str(path))
    with pytest.raises(ValueError, match=rf"^{path} lacks weights for: text encoder \(cond_stage_model"):
        load_model(path)


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"conditioner.embedders.0.transformer.x": (1,), UNET_PREFIX + "a": (1,)}, "SDXL"),
        ({"foo.weight": (3,)}, "foo.weight"),
        ({UNET_PREFIX + "input_blocks.0.0.weight": (320, 9, 3, 3)}, "9 input channels"),
        ({UNET_PREFIX + "middle_block.1.transformer_blocks.0.attn2.to_k.weight": (64, 32)}, "[32]"),
    ],
)
def test_detection_refuses_other_layouts(shapes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        detect_sd_version(shapes)


def test_missing_paths_are_named(tmp_path, tiny_single_file, tiny_diffusers_dir):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_model(missing)
    with pytest.raises(FileNotFoundError, match="no_config"):
        load_model(tiny_single_file, config=tmp_path / "no_config")
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "model_index.json").write_text((tiny_diffusers_dir / "model_index.json").read_text())
    with pytest.raises(FileNotFoundError, match="unet/config.json"):
        load_model(folder)


def test_config_with_a_folder_source_is_refused(tiny_diffusers_dir):
    with pytest.raises(ValueError, match="single-file"):
        load_model(tiny_diffusers_dir, config="sd15")


def test_ckpt_loads_only_when_it_holds_nothing_but_tensors(tmp_path, tiny_bundle, tiny_diffusers_dir):
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": ldm_state_dict(tiny_bundle)}, plain)
    assert_same_weights(load_model(plain, config=tiny_diffusers_dir), tiny_bundle)

    pickled = tmp_path / "model.ckpt"
    torch.save({"state_dict": ldm_state_dict(tiny_bundle), "module": torch.nn.Identity()}, pickled)
    with pytest.raises(ValueError, match="model.ckpt cannot be read as plain tensors"):
        load_model(pickled, config=tiny_diffusers_dir)


def test_unknown_file_layout_says_what_it_found(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.layer.0.weight": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="encoder.layer.0.weight"):
        load_model(path)


def test_tiny_source_is_the_test_model(tiny_bundle):
    bundle = load_model("tiny", prediction_type="v_prediction")

    assert_same_weights(bundle, tiny_bundle)
    assert bundle.prediction_type == "v_prediction" and tiny_bundle.prediction_type == "epsilon"


def test_default_source_is_the_shipped_world_model():
    from scoft_train.biaslab import WORLD_DIR

    bundle = load_model("default")
    folder = load_model(WORLD_DIR)
    assert_same_weights(bundle, folder)
    assert bundle.source == "default" and bundle.fingerprint == folder.fingerprint
    assert bundle.resolution == 32 and all(not p.requires_grad for p in bundle.unet.parameters())


def test_sd2_tokenizer_pads_like_open_clip():
    ids = load_clip_tokenizer(pad_token="!")("a cat", padding="max_length").input_ids
    assert ids[:4] == [49406, 320, 2368, 49407] and ids[4:] == [0] * 73
    assert load_clip_tokenizer()("a cat", padding="max_length").input_ids[4] == 49407
