"""Our kohya export against the host's own LoRA key maps, for a full-size SD 1.5 UNet and
its CLIP ViT-L/14 text encoder.

No weights exist offline, so every model lives on the meta device: the diffusers UNet and
the transformers CLIPTextModel (both from the bundled SD 1.5 config) carry a peft LoRA
whose small A/B tensors alone are real, and ComfyUI's side is built on meta in a
subprocess, with the host's ComfyUI copy on sys.path, so that ComfyUI's top-level modules
never enter this process. There ComfyUI detects the model from our UNet config, builds its
SD 1.5 UNet (`model_config.get_model`) or its SD 1.x CLIP (`model_config.clip_target()`,
the class `comfy.sd.CLIP` instantiates), takes `model_lora_keys_unet` / `model_lora_keys_clip`
and runs `comfy.lora.load_lora` on our file, as its LoraLoader does.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from scoft_train.lora import ADAPTER_NAME, TEXT_ENCODER_TARGETS, add_lora, export_kohya, lora_layers
from scoft_train.models import BUNDLED_CONFIGS

UNET_CONFIG = BUNDLED_CONFIGS["sd15"] / "unet"
TEXT_ENCODER_CONFIG = BUNDLED_CONFIGS["sd15"] / "text_encoder"
RANK = 4
SD15_LORA_MODULES = 128  # 16 transformer blocks x 2 attentions x (q, k, v, out)
SD15_TE_LORA_MODULES = 48  # 12 CLIP layers x (q, k, v, out)

# Shared head of every host-side script: argv, ComfyUI on sys.path, the detected model
# config, and `summarise`, which loads our file through ComfyUI and checks it against the
# key map of the model the body builds (printed as one JSON line).
PREAMBLE = r"""
import json, sys
comfy_root, lora_path, unet_config, prefix = sys.argv[1:5]
sys.argv[1:] = ["--cpu"]
sys.path.insert(0, comfy_root)
import comfy.options
comfy.options.enable_args_parsing()  # as ComfyUI's main.py does, so --cpu applies
import comfy.lora, comfy.model_detection, comfy.utils
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel

with init_empty_weights():
    diffusers_unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(unet_config))
model_config = comfy.model_detection.model_config_from_diffusers_unet(diffusers_unet.state_dict())


def summarise(model, key_map):
    weights = model.state_dict()
    lora = comfy.utils.load_torch_file(lora_path, safe_load=True)
    modules = sorted({k[: -len(".lora_down.weight")] for k in lora
                      if k.startswith(prefix) and k.endswith(".lora_down.weight")})
    patches = comfy.lora.load_lora(lora, key_map)
    shape_ok = [
        m for m in modules
        if m in key_map and tuple(weights[key_map[m]].shape)
        == (lora[m + ".lora_up.weight"].shape[0], lora[m + ".lora_down.weight"].shape[1])
    ]
    print(json.dumps({
        "model_config": type(model_config).__name__,
        "model": type(model).__name__,
        "modules": len(modules),
        "patches": len(patches),
        "unmapped": [m for m in modules if m not in key_map],
        "patched": sorted(key_map[m] for m in modules if m in key_map and key_map[m] in patches),
        "shape_ok": len(shape_ok),
        "weight_keys": sorted(weights),
    }))
"""

UNET_CHECK = PREAMBLE + r"""
model = model_config.get_model({}, device="meta")
summarise(model, comfy.lora.model_lora_keys_unet(model, {}))
"""

# comfy.sd.CLIP does `target.clip(**target.params, device=offload_device, dtype=...)`;
# here the same class is built straight on meta (CLIP() itself would also load a tokenizer).
# Under inference_mode, as ComfyUI's execution.py runs its loaders: the CLIP constructor
# writes an identity text_projection in place, which autograd refuses outside it.
CLIP_CHECK = PREAMBLE + r"""
import torch
target = model_config.clip_target()
with torch.inference_mode():
    model = target.clip(**target.params, device="meta")
summarise(model, comfy.lora.model_lora_keys_clip(model, {}))
"""


def realise_adapter(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give the LoRA A/B of a meta-device `model` real random CPU weights (the base stays on meta)."""
    for layer in lora_layers(model).values():
        for part in (layer.lora_A[ADAPTER_NAME], layer.lora_B[ADAPTER_NAME]):
            part.to_empty(device="cpu")
            with torch.no_grad():
                part.weight.normal_(generator=generator)


def sd15_lora(path, text_encoder: bool = False):
    """Our export of a rank-4 LoRA on an SD 1.5-shaped diffusers UNet (meta base, real adapter),
    with `text_encoder` also one on the SD 1.5 CLIP text encoder (`lora_te_` keys)."""
    generator = torch.Generator().manual_seed(0)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(UNET_CONFIG))
    add_lora(unet, rank=RANK, alpha=float(RANK))
    realise_adapter(unet, generator)
    te = None
    if text_encoder:
        with init_empty_weights():
            te = CLIPTextModel(CLIPTextConfig.from_pretrained(TEXT_ENCODER_CONFIG))
        add_lora(te, rank=RANK, alpha=float(RANK), targets=TEXT_ENCODER_TARGETS)
        realise_adapter(te, generator)
    return export_kohya(unet, path, text_encoder=te)


def host_check(comfy_host, script: str, lora, prefix: str) -> dict:
    """Run `script` (PREAMBLE + a body) against the host's ComfyUI for the `prefix` modules of `lora`."""
    result = subprocess.run(
        [sys.executable, "-c", script, str(comfy_host.root), str(lora), str(UNET_CONFIG), prefix],
        capture_output=True, text=True, timeout=180, check=False, cwd=lora.parent,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_kohya_export_maps_onto_comfyui_sd15_unet(comfy_host, tmp_path):
    lora = sd15_lora(tmp_path / "sd15_lora.safetensors")
    report = host_check(comfy_host, UNET_CHECK, lora, "lora_unet_")

    assert report["model_config"] == "SD15"  # ComfyUI detects our bundled config as SD 1.5
    assert report["modules"] == SD15_LORA_MODULES
    assert report["unmapped"] == []
    assert report["patches"] == SD15_LORA_MODULES  # load_lora turns every module into a weight patch
    assert len(set(report["patched"])) == SD15_LORA_MODULES  # ... one per module, on its own weight
    assert all(key.startswith("diffusion_model.") for key in report["patched"])
    assert set(report["patched"]) <= set(report["weight_keys"])
    assert report["shape_ok"] == SD15_LORA_MODULES  # up @ down has the patched weight's shape


def test_kohya_text_encoder_export_maps_onto_comfyui_sd15_clip(comfy_host, tmp_path):
    lora = sd15_lora(tmp_path / "sd15_te_lora.safetensors", text_encoder=True)
    report = host_check(comfy_host, CLIP_CHECK, lora, "lora_te_")

    assert report["model_config"] == "SD15"
    assert report["model"] == "SD1ClipModel"  # the CLIP ComfyUI pairs with an SD 1.5 UNet
    assert report["modules"] == SD15_TE_LORA_MODULES
    assert report["unmapped"] == []
    assert report["patches"] == SD15_TE_LORA_MODULES
    assert len(set(report["patched"])) == SD15_TE_LORA_MODULES
    assert all(key.startswith("clip_l.transformer.text_model.encoder.layers.") for key in report["patched"])
    assert set(report["patched"]) <= set(report["weight_keys"])
    assert report["shape_ok"] == SD15_TE_LORA_MODULES  # [768, 4] @ [4, 768] == the 768 x 768 projection
