"""Every API workflow (workflows/api/*.json) run through the real server with the bundled client."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image
from safetensors import safe_open

from scoft_train import client

from .helpers import REPO_ROOT

API = REPO_ROOT / "workflows" / "api"
KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
# The shipped workflows train 150 steps and denoise 20 (a visible effect); the tests keep
# the graphs and their settings but take fewer steps, through the client's own --set.
FAST_NEGATIVES = ["Generate SCoFT Negatives.steps=4"]
FAST_TRAIN = ["SCoFT Train.steps=4", *FAST_NEGATIVES]


def newest_lora(host, folder: str):
    saved = sorted((host.root / "models" / "loras" / folder).glob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
    assert saved, f"no LoRA in models/loras/{folder}; log:\n{host.log_tail()}"
    return saved[-1]  # the last one written (other tests' SFSL LoRAs share the folder)


@pytest.fixture(scope="module")
def finetuned(comfy_host, tmp_path_factory):
    """scoft_finetune_compare.json through the CLI, as a user would run it."""
    out = tmp_path_factory.mktemp("finetune")
    result = subprocess.run(
        [sys.executable, "-m", "scoft_train.client", "run", str(API / "scoft_finetune_compare.json"),
         "--server", comfy_host.url, "--out", str(out), *(a for o in FAST_TRAIN for a in ("--set", o))],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180, check=False,
    )
    assert result.returncode == 0, f"{result.stderr}\nserver log:\n{comfy_host.log_tail()}"
    return result, out


def test_finetune_compare_workflow(comfy_host, finetuned):
    result, out = finetuned
    assert "(SCoFTTrainLoRA) 4/4" in result.stderr  # progress reached the client over the websocket

    (grid_path,) = [p for p in out.iterdir() if p.name.startswith("compare_")]
    assert (comfy_host.root / "output" / "scoft" / grid_path.name).is_file()
    with Image.open(grid_path) as grid:
        # 4 prompt rows of 32 px images shown at 64 px plus a header; label column + 2 image columns.
        assert grid.width > 2 * 64 and grid.height > 4 * 64
        assert len(grid.convert("RGB").getcolors(maxcolors=1 << 20)) > 100  # real images, not blanks
    assert [p for p in out.iterdir() if p.name.startswith("loss_plot_")]

    lora = newest_lora(comfy_host, "scoft")
    with safe_open(str(lora), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
        assert all(key.startswith("lora_unet_") and key.endswith(KOHYA_SUFFIXES) for key in keys), keys[:5]
        assert handle.get_tensor(next(k for k in keys if k.endswith(".lora_down.weight"))).shape[0] == 8
    assert (metadata["scoft_preset"], metadata["ss_network_dim"], metadata["scoft_steps"]) == ("FT+MPC", "8", "4")
    listed = comfy_host.get_json("/object_info/LoraLoader")["LoraLoader"]["input"]["required"]["lora_name"][0]
    assert f"scoft/{lora.name}" in listed


def test_sample_compare_workflow(comfy_host, finetuned, tmp_path):
    lora = newest_lora(comfy_host, "scoft")
    prompt = client.apply_overrides(client.load_prompt(API / "sample_compare.json"),
                                    [f"Load SCoFT LoRA.lora_name=scoft/{lora.name}"])
    paths = client.run_workflow(prompt, comfy_host.url, tmp_path, timeout=120)
    (grid_path,) = paths
    assert (comfy_host.root / "output" / "scoft" / grid_path.name).is_file()
    with Image.open(grid_path) as grid:
        assert grid.width > 2 * 64 and grid.height > 3 * 64


def test_every_api_workflow_is_covered():
    assert sorted(p.name for p in API.glob("*.json")) == [
        "rs_corrector_compare.json", "sample_compare.json", "scoft_finetune_compare.json", "sfsl_spurious.json",
    ]
    for path in API.glob("*.json"):
        prompt = json.loads(path.read_text(encoding="utf-8"))
        assert all("class_type" in node for node in prompt.values()), path


def test_rs_corrector_compare_workflow(comfy_host, tmp_path):
    prompt = client.apply_overrides(client.load_prompt(API / "rs_corrector_compare.json"),
                                    [*FAST_NEGATIVES, "RS-Corrector Fit.steps=50"])
    paths = client.run_workflow(prompt, comfy_host.url, tmp_path, timeout=300)
    (grid_path,) = paths
    assert (comfy_host.root / "output" / "scoft" / grid_path.name).is_file()
    with Image.open(grid_path) as grid:
        rgb = grid.convert("RGB")
        assert grid.width > 2 * 32 and grid.height > 3 * 32
    half = rgb.width // 2
    # The RS-Corrector column differs from the baseline column (K > 0 moves the latents).
    assert rgb.crop((0, 0, half, rgb.height)).tobytes() != rgb.crop((half, 0, 2 * half, rgb.height)).tobytes()


def test_sfsl_spurious_workflow(comfy_host, tmp_path):
    prompt = client.apply_overrides(client.load_prompt(API / "sfsl_spurious.json"), [
        "SFSL Train.steps=3", "SFSL Advanced Settings.class_images=2", "SFSL Advanced Settings.class_image_steps=2",
        "SFSL Train.run_name=sfsl_test", "Baseline Sampler.steps=4", "SFSL Sampler.steps=4",
    ])
    paths = client.run_workflow(prompt, comfy_host.url, tmp_path, timeout=300)
    (grid_path,) = [p for p in paths if p.name.startswith("sfsl_compare_")]
    assert (comfy_host.root / "output" / "scoft" / grid_path.name).is_file()
    with Image.open(grid_path) as grid:
        assert grid.width > 2 * 32 and grid.height > 6 * 32
    assert [p for p in paths if p.name.startswith("sfsl_loss_plot_")]
    run = comfy_host.root / "output" / "scoft_runs" / "sfsl_test"
    assert len(list((run / "class_images").glob("class_*.png"))) == 2  # cached in the run folder

    (lora,) = sorted((comfy_host.root / "models" / "loras" / "scoft").glob("sfsl_lora_*.safetensors"))
    with safe_open(str(lora), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
    assert all(key.endswith(KOHYA_SUFFIXES) for key in keys), keys[:5]
    assert any(key.startswith("lora_unet_") for key in keys) and any(key.startswith("lora_te_") for key in keys)
    assert (metadata["scoft_method"], metadata["scoft_steps"]) == ("SFSL", "3")
    assert metadata["scoft_instance_prompt"] == "a photo of a sks market"
    # The shipped classifier drives the spurious loss by default.
    assert json.loads(metadata["scoft_loss_weights"])["spurious"] == 0.1
    assert json.loads(metadata["scoft_config"])["classifier_weights"].endswith("spurious/classifier")
    history = json.loads((run / "loss_history.json").read_text())
    assert any(entry.get("loss/spurious") is not None for entry in history)
