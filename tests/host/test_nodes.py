"""The SCoFT nodes inside the real ComfyUI server: registration, errors, caching, LoRA files, cancel."""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from scoft_train import client
from scoft_train.checkpoint import load_checkpoint
from scoft_train.config import PRESETS, LossWeights, TrainConfig
from scoft_train.lora import add_lora, export_kohya
from scoft_train.sampling import SCHEDULERS
from scoft_train.sfsl import SFSLConfig

from .helpers import FIXTURES, REPO_ROOT, set_inputs

FINETUNE = REPO_ROOT / "workflows" / "api" / "scoft_finetune_compare.json"
TRAIN, TRAIN_SETTINGS = "3", "11"  # SCoFT Train and its SCoFT Advanced Settings in that workflow
CUSTOM = {"SCOFT_MODEL", "SCOFT_DATASET", "SCOFT_LORA", "SCOFT_TRAIN_SETTINGS", "SCOFT_SFSL_SETTINGS", "IMAGE"}

# The widget orders of the full (deprecated) training nodes as workflows saved them (positional widget values).
TRAIN_SAVED_ORDER = (
    "preset", "weights", "steps", "batch_size", "grad_accum", "lr", "lr_schedule", "warmup_steps", "max_grad_norm",
    "rank", "alpha", "seed", "contrastive_every", "denoise_steps", "cfg", "grad_mode", "perceptual_backbone",
    "perceptual_weights", "contrastive_backbone", "contrastive_weights", "allow_random_backbone", "contrastive_form",
    "margin", "mixed_precision", "gradient_checkpointing", "checkpoint_every", "checkpoint_limit",
)
SFSL_SAVED_ORDER = (
    "class_name", "identifier", "instance_template", "class_template", "prior_loss_weight", "spurious_weight",
    "spurious_every", "classifier", "classifier_weights", "classifier_size", "target_class", "train_text_encoder",
    "steps", "batch_size", "grad_accum", "lr", "lr_schedule", "warmup_steps", "max_grad_norm", "rank", "alpha", "seed",
    "denoise_steps", "cfg", "grad_mode", "mixed_precision", "gradient_checkpointing", "checkpoint_every",
    "checkpoint_limit",
)
SFSL_CLASS_IMAGES = ["class_images", "class_image_steps"]
TRAIN_MAIN = ["preset", "steps", "rank", "lr", "seed"]  # on the short SCoFT Train
SFSL_MAIN = ["class_name", "steps", "rank", "lr", "seed"]  # on the short SFSL Train
RUN = ["run_name", "resume"]


def expand_weights(names) -> list[str]:
    """A saved order with `weights` as the node lists it: one weight_<loss> widget per loss."""
    expanded = []
    for name in names:
        expanded += [f"weight_{w.name}" for w in dataclasses.fields(LossWeights)] if name == "weights" else [name]
    return expanded


TRAIN_FULL = ["model", "dataset", *expand_weights(TRAIN_SAVED_ORDER), *RUN, "preview_every"]
TRAIN_ADVANCED = [name for name in expand_weights(TRAIN_SAVED_ORDER) if name not in TRAIN_MAIN] + ["preview_every"]
SFSL_FULL = ["model", "instance_folder", *SFSL_SAVED_ORDER, *SFSL_CLASS_IMAGES, *RUN, "preview_every"]
SFSL_ADVANCED = [name for name in SFSL_SAVED_ORDER if name not in SFSL_MAIN] + [*SFSL_CLASS_IMAGES, "preview_every"]
TRAINED = ["SCOFT_LORA", "IMAGE", "STRING"]

# node id: (display name, category, required inputs, optional inputs, outputs, output node)
EXPECTED = {
    "SCoFTLoadModel": ("Load SCoFT Model", "SCoFT/model",
                       ["model", "config", "prediction_type", "dtype", "device"], [], ["SCOFT_MODEL"], False),
    "SCoFTLoadCCUBDataset": ("Load CCUB Dataset", "SCoFT/data",
                             ["folder", "culture_terms", "resolution"], [], ["SCOFT_DATASET", "IMAGE", "STRING"], False),
    "SCoFTGenerateNegatives": ("Generate SCoFT Negatives", "SCoFT/data",
                               ["model", "controlnet", "dataset", "depth_source", "annotator_dir", "k", "seed", "steps",
                                "cfg", "conditioning_scale", "control_end", "batch_size", "scheduler"],
                               ["depth_images"], ["SCOFT_DATASET", "IMAGE"], False),
    "SCoFTTrainLoRA": ("SCoFT Train", "SCoFT/train", ["model", "dataset", *TRAIN_MAIN, *RUN], ["settings"], TRAINED,
                       False),
    "SCoFTTrainSettings": ("SCoFT Advanced Settings", "SCoFT/train", TRAIN_ADVANCED, [], ["SCOFT_TRAIN_SETTINGS"],
                           False),
    "SCoFTTrain": ("SCoFT Train (deprecated, all settings)", "SCoFT/deprecated", TRAIN_FULL, [], TRAINED, False),
    "SCoFTSaveLoRA": ("Save SCoFT LoRA", "SCoFT/lora", ["lora", "filename_prefix"], [], ["STRING"], True),
    "SCoFTLoadLoRA": ("Load SCoFT LoRA", "SCoFT/lora", ["lora_name"], [], ["SCOFT_LORA"], False),
    "SCoFTSampler": ("SCoFT Sampler", "SCoFT/sample",
                     ["model", "prompts", "negative_prompt", "seed", "steps", "cfg", "scheduler", "width", "height"],
                     ["lora", "lora_strength"], ["IMAGE"], False),
    "SCoFTCompareGrid": ("SCoFT Compare Grid", "SCoFT/sample",
                         ["left_images", "right_images", "left_label", "right_label", "prompts"], ["seeds_per_prompt"],
                         ["IMAGE"], False),
    "SCoFTLoRACompareGrid": ("SCoFT LoRA Compare Grid", "SCoFT/sample",
                             ["model", "lora", "prompts", "seeds_per_prompt", "lora_strengths", "negative_prompt", "seed",
                              "steps", "cfg", "scheduler", "width", "height"], [], ["IMAGE"], False),
    "SCoFTSFSLTrainLoRA": ("SFSL Train", "SCoFT/sfsl", ["model", "instance_folder", *SFSL_MAIN, *RUN], ["settings"],
                           TRAINED, False),
    "SCoFTSFSLSettings": ("SFSL Advanced Settings", "SCoFT/sfsl", SFSL_ADVANCED, [], ["SCOFT_SFSL_SETTINGS"], False),
    "SCoFTSFSLTrain": ("SFSL Train (deprecated, all settings)", "SCoFT/deprecated", SFSL_FULL, [], TRAINED, False),
}
# (short node, its settings node, the deprecated full node)
SPLITS = (("SCoFTTrainLoRA", "SCoFTTrainSettings", "SCoFTTrain"),
          ("SCoFTSFSLTrainLoRA", "SCoFTSFSLSettings", "SCoFTSFSLTrain"))


def test_saved_widget_orders_cover_every_setting():
    """The saved orders below are the contract with saved workflows (ComfyUI stores widget
    values by position); they must still name every setting exactly once."""
    assert sorted(TRAIN_SAVED_ORDER) == sorted(f.name for f in dataclasses.fields(TrainConfig))
    assert sorted(SFSL_SAVED_ORDER) == sorted(f.name for f in dataclasses.fields(SFSLConfig))


def finetune_prompt(**train_overrides) -> dict:
    prompt = json.loads(FINETUNE.read_text(encoding="utf-8"))
    # The shipped step counts are for people; tests keep the graph but take fewer steps.
    set_inputs(prompt, (TRAIN, TRAIN_SETTINGS), **{"steps": 4, **train_overrides})
    prompt["10"]["inputs"]["steps"] = 4
    return prompt


def post_prompt(host, prompt: dict) -> str:
    body = json.dumps({"prompt": prompt, "client_id": uuid.uuid4().hex}).encode()
    request = urllib.request.Request(host.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())["prompt_id"]


def wait_history(host, prompt_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = host.get_json(f"/history/{prompt_id}").get(prompt_id)
        if entry:
            return entry
        time.sleep(0.2)
    raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s; log:\n{host.log_tail()}")


def test_object_info_lists_every_node_with_tooltips(comfy_host):
    info = comfy_host.get_json("/object_info")
    for node_id, (display, category, required, optional, outputs, output_node) in EXPECTED.items():
        assert node_id in info, f"{node_id} missing from /object_info; log:\n{comfy_host.log_tail()}"
        node = info[node_id]
        assert (node["display_name"], node["category"], node["output"], node["output_node"]) == (
            display, category, outputs, output_node)
        assert node["description"], node_id
        declared = node["input"]["required"]
        assert list(declared) == required, node_id
        assert list(node["input"].get("optional", {})) == optional, node_id
        for name, spec in {**declared, **node["input"].get("optional", {})}.items():
            options = spec[1] if len(spec) > 1 else {}
            assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
            if spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                assert "default" in options, f"{node_id}.{name} has no default"
            else:
                assert isinstance(spec[0], list) or spec[0] in CUSTOM or spec[0] == "STRING", (node_id, name, spec[0])

    train = info["SCoFTTrain"]["input"]["required"]
    for spec in dataclasses.fields(TrainConfig):
        if spec.name != "weights":
            assert spec.metadata["help"] in train[spec.name][1]["tooltip"], spec.name
    assert train["preset"][0] == list(PRESETS) and train["preset"][1]["default"] == "FT+MPC"
    assert train["steps"][1]["default"] == TrainConfig().steps
    assert train["weight_contrastive"][1]["default"] == LossWeights().contrastive
    assert info["SCoFTSampler"]["input"]["required"]["scheduler"][0] == list(SCHEDULERS)
    assert info["SCoFTLoadModel"]["input"]["required"]["model"][0][0] == "default"


def test_short_node_and_its_settings_show_every_widget_of_the_full_node_once(comfy_host):
    """SCoFT Train + SCoFT Advanced Settings (and the SFSL pair) hold exactly the deprecated full node's
    widgets, each with the same type, choices, default, range and tooltip: one declaration behind all."""
    info = comfy_host.get_json("/object_info")
    for short, settings, full in SPLITS:
        split = {**info[short]["input"]["required"], **info[settings]["input"]["required"]}
        whole = info[full]["input"]["required"]
        assert sorted(split) == sorted(whole), (short, settings, full)
        for name, spec in whole.items():
            assert split[name] == spec, (full, name)
        assert not set(info[short]["input"]["required"]) & set(info[settings]["input"]["required"])


def test_custom_node_imported_without_error(comfy_host):
    log = comfy_host.log_tail(400)
    lines = [line for line in log.splitlines() if "comfyui-scoft" in line]
    assert lines, f"the custom node is not in the import list:\n{log}"
    assert not any("IMPORT FAILED" in line for line in lines), log
    assert "Cannot import" not in log, log


def test_broken_dataset_path_is_reported_and_server_keeps_serving(comfy_host, tmp_path):
    missing = "no_such_ccub_folder"  # a name in no ccub root: refused when the prompt is validated
    prompt = finetune_prompt()
    prompt["2"]["inputs"]["folder"] = missing
    with pytest.raises(client.PromptRejected) as failure:
        client.run_workflow(prompt, comfy_host.url, tmp_path / "out", timeout=120)
    message = str(failure.value)
    assert "node 2 (SCoFTLoadCCUBDataset" in message and f"folder {missing!r}: no such folder" in message, message
    assert str(comfy_host.root / "input" / "ccub") in message, message  # where datasets go

    # The next prompt runs normally.
    paths = client.run_workflow(json.loads((FIXTURES / "empty_image_api.json").read_text()), comfy_host.url,
                                tmp_path / "next", timeout=60)
    assert paths and all(p.is_file() for p in paths)


def test_invalid_metadata_names_file_and_line(comfy_host, tmp_path):
    folder = comfy_host.root / "input" / "broken_ccub"
    folder.mkdir()
    (folder / "metadata.jsonl").write_text(
        '{"file_name": "images/missing.png", "text": "a Korean house"}\nnot json\n', encoding="utf-8"
    )
    prompt = finetune_prompt()
    prompt["2"]["inputs"]["folder"] = "broken_ccub"  # relative = under ComfyUI's input folder
    with pytest.raises(client.ExecutionFailed) as failure:
        client.run_workflow(prompt, comfy_host.url, tmp_path, timeout=120)
    message = str(failure.value)
    assert "metadata.jsonl line 1" in message and "images/missing.png" in message, message
    assert "metadata.jsonl line 2" in message and "not valid JSON" in message, message


def _baseline_prompt(first_id: int) -> dict:
    """Load model -> baseline sampler -> SaveImage, under node ids not used elsewhere."""
    finetune = json.loads(FINETUNE.read_text(encoding="utf-8"))
    loader, sampler, save = (str(first_id + k) for k in range(3))
    inputs = dict(finetune["5"]["inputs"], model=[loader, 0])
    return {
        loader: finetune["1"],
        sampler: {"class_type": "SCoFTSampler", "inputs": inputs},
        save: {"class_type": "SaveImage", "inputs": {"images": [sampler, 0], "filename_prefix": f"nodes_test/base{first_id}"}},
    }


def _pixels(paths) -> np.ndarray:
    """The images (one per prompt line) stacked [N, H, W, 3]."""
    assert len(paths) == 4, paths
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB")))
    return np.stack(arrays)


def test_cached_model_is_reused_and_never_mutated(comfy_host, tmp_path):
    before = _pixels(client.run_workflow(_baseline_prompt(100), comfy_host.url, tmp_path / "a", timeout=120))

    # Train and sample with the LoRA on the same cached model.
    paths = client.run_workflow(finetune_prompt(run_name="nodes_cache_test", lr=0.01), comfy_host.url,
                                tmp_path / "train", timeout=180)
    assert any(p.name.startswith("compare") for p in paths)

    after = _pixels(client.run_workflow(_baseline_prompt(110), comfy_host.url, tmp_path / "b", timeout=120))
    np.testing.assert_array_equal(before, after)
    assert "reusing the cached copy" in comfy_host.log_tail(400)


def test_save_lora_counts_up_and_core_loader_lists_it(comfy_host, tmp_path, tiny_bundle):
    unet = copy.deepcopy(tiny_bundle.unet)
    add_lora(unet, rank=2, alpha=2.0)
    source = export_kohya(unet, comfy_host.root / "models" / "loras" / "nodes_src" / "tiny.safetensors")

    prompt = {
        "1": {"class_type": "SCoFTLoadLoRA", "inputs": {"lora_name": "nodes_src/tiny.safetensors"}},
        "2": {"class_type": "SCoFTSaveLoRA", "inputs": {"lora": ["1", 0], "filename_prefix": "nodes_save/copy"}},
        "3": {"class_type": "SCoFTSaveLoRA", "inputs": {"lora": ["1", 0], "filename_prefix": "nodes_save/copy"}},
    }
    prompt_id = post_prompt(comfy_host, prompt)
    entry = wait_history(comfy_host, prompt_id)
    assert entry["status"]["status_str"] == "success", entry["status"]
    names = sorted(entry["outputs"][node]["text"][0] for node in ("2", "3"))
    assert names == ["nodes_save/copy_00001_.safetensors", "nodes_save/copy_00002_.safetensors"]
    for name in names:
        saved = comfy_host.root / "models" / "loras" / name
        assert saved.read_bytes() == source.read_bytes()

    listed = comfy_host.get_json("/object_info/LoraLoader")["LoraLoader"]["input"]["required"]["lora_name"][0]
    assert set(names) <= set(listed)

    bad = {"1": prompt["1"], "2": {"class_type": "SCoFTSaveLoRA", "inputs": {"lora": ["1", 0], "filename_prefix": "../escape"}}}
    with pytest.raises(client.ExecutionFailed, match="must name a file inside"):
        client.run_workflow(bad, comfy_host.url, tmp_path, timeout=60)


def test_cancel_saves_checkpoint_and_resume_continues(comfy_host, tmp_path):
    run = "nodes_cancel_test"
    settings = dict(run_name=run, preset="FT", steps=5000, checkpoint_every=0)
    full = finetune_prompt(**settings)
    prompt = {k: full[k] for k in ("1", "2", "10", TRAIN, TRAIN_SETTINGS, "4")}
    prompt["4"]["inputs"]["filename_prefix"] = f"{run}/lora"
    prompt_id = post_prompt(comfy_host, prompt)

    deadline = time.monotonic() + 60
    while not any(item[1] == prompt_id for item in comfy_host.get_json("/queue")["queue_running"]):
        assert time.monotonic() < deadline, "the prompt never started"
        time.sleep(0.2)
    time.sleep(3.0)  # a few training steps
    urllib.request.urlopen(urllib.request.Request(comfy_host.url + "/interrupt", data=b"", method="POST"), timeout=10)
    entry = wait_history(comfy_host, prompt_id)
    kinds = [message[0] for message in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, entry["status"]

    checkpoints = sorted((comfy_host.root / "output" / "scoft_runs" / run / "checkpoints").glob("*.safetensors"))
    assert checkpoints, f"no checkpoint after cancel; log:\n{comfy_host.log_tail()}"
    step = load_checkpoint(checkpoints[-1]).step
    assert 0 < step < 5000

    prompt = copy.deepcopy(prompt)
    prompt[TRAIN]["inputs"].update(steps=step + 2, resume=True)
    client.run_workflow(prompt, comfy_host.url, tmp_path, timeout=120)
    (saved,) = (comfy_host.root / "models" / "loras" / run).glob("*.safetensors")
    with safe_open(str(saved), framework="pt") as handle:
        assert handle.metadata()["scoft_steps"] == str(step + 2)
    assert f"resumed from {checkpoints[-1]}" in comfy_host.log_tail(400)
