"""Our kohya export against the host's own LoRA key map, for a full-size SD 1.5 UNet.

No weights exist offline, so both UNets live on the meta device: the diffusers one
(from the bundled config) carries a peft LoRA whose small A/B tensors alone are real,
and ComfyUI's SD 1.5 model is built on meta in a subprocess, with the host's ComfyUI
copy on sys.path, so that ComfyUI's top-level modules never enter this process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel

from scoft_train.lora import ADAPTER_NAME, add_lora, export_kohya, lora_layers
from scoft_train.models import BUNDLED_CONFIGS

UNET_CONFIG = BUNDLED_CONFIGS["sd15"] / "unet"
RANK = 4
SD15_LORA_MODULES = 128  # 16 transformer blocks x 2 attentions x (q, k, v, out)

CHECK = r"""
import json, sys
comfy_root, lora_path, unet_config = sys.argv[1:4]
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
model = model_config.get_model({}, device="meta")
weights = model.state_dict()
key_map = comfy.lora.model_lora_keys_unet(model, {})
lora = comfy.utils.load_torch_file(lora_path, safe_load=True)
modules = sorted({k[: -len(".lora_down.weight")] for k in lora if k.endswith(".lora_down.weight")})
patches = comfy.lora.load_lora(lora, key_map)
shape_ok = [
    m for m in modules
    if m in key_map and tuple(weights[key_map[m]].shape)
    == (lora[m + ".lora_up.weight"].shape[0], lora[m + ".lora_down.weight"].shape[1])
]
print(json.dumps({
    "model_config": type(model_config).__name__,
    "modules": len(modules),
    "unmapped": [m for m in modules if m not in key_map],
    "patched": sorted(patches),
    "shape_ok": len(shape_ok),
    "unet_keys": sorted(k for k in weights if k.startswith("diffusion_model.")),
}))
"""


def sd15_lora(path):
    """Our export of a rank-4 LoRA on an SD 1.5-shaped diffusers UNet (meta base, real adapter)."""
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(UNET_CONFIG))
    add_lora(unet, rank=RANK, alpha=float(RANK))
    generator = torch.Generator().manual_seed(0)
    for layer in lora_layers(unet).values():
        for part in (layer.lora_A[ADAPTER_NAME], layer.lora_B[ADAPTER_NAME]):
            part.to_empty(device="cpu")
            with torch.no_grad():
                part.weight.normal_(generator=generator)
    return export_kohya(unet, path)


def test_kohya_export_maps_onto_comfyui_sd15_unet(comfy_host, tmp_path):
    lora = sd15_lora(tmp_path / "sd15_lora.safetensors")
    result = subprocess.run(
        [sys.executable, "-c", CHECK, str(comfy_host.root), str(lora), str(UNET_CONFIG)],
        capture_output=True, text=True, timeout=180, check=False, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["model_config"] == "SD15"  # ComfyUI detects our bundled config as SD 1.5
    assert report["modules"] == SD15_LORA_MODULES
    assert report["unmapped"] == []
    assert len(report["patched"]) == SD15_LORA_MODULES  # every module becomes a weight patch
    assert set(report["patched"]) <= set(report["unet_keys"])
    assert report["shape_ok"] == SD15_LORA_MODULES  # up @ down has the patched weight's shape
