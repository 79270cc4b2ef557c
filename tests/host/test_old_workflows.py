"""Workflows saved before the short training nodes, in the real page and on the real server.

tests/host/fixtures/old_workflows holds the shipped workflows as they were (UI files and their API twins),
with the full SCoFT Train / SFSL Train nodes (now the deprecated ids SCoFTTrain and SCoFTSFSLTrain) whose
widget values ComfyUI saved by position. They must load with every value on its input, run through the
server's API, and train with the same config as today's shipped workflows (the short node and its
Advanced Settings). The short node without settings trains with the Advanced Settings node's defaults.
"""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from scoft_train import client
from scoft_train.config import TrainConfig

from .helpers import FIXTURES, REPO_ROOT, set_inputs, upstream
from .test_ui_workflows import prompt_differences

OLD = FIXTURES / "old_workflows"
API = REPO_ROOT / "workflows" / "api"
RUNS = ("output", "scoft_runs")
# workflow: (training node, its settings node today, save-LoRA node, LoRA file name, fast settings)
TRAINING = {
    "scoft_finetune_compare": ("3", "11", "4", "scoft_lora.safetensors", {"steps": 2, "preview_every": 0}),
    "sfsl_spurious": ("2", "9", "3", "sfsl_lora.safetensors",
                      {"steps": 1, "class_images": 2, "class_image_steps": 2, "preview_every": 0}),
}
NEGATIVES, FAST_NEGATIVES = "10", {"steps": 4}  # in scoft_finetune_compare
SHORT = {"SCoFTTrain": "SCoFTTrainLoRA", "SCoFTSFSLTrain": "SCoFTSFSLTrainLoRA"}  # deprecated id: its successor


def declared_default(spec: list):
    """The value a widget starts with in the frontend: its default, a combo's first choice."""
    options = spec[1] if len(spec) > 1 else {}
    return options["default"] if "default" in options else spec[0][0]


def without_added_defaults(got: dict, saved: dict, info: dict) -> dict:
    """`got` less the inputs that the saved prompt lacks and that hold their declared default (inputs added
    to a node since the workflow was saved); any other difference stays for prompt_differences."""
    trimmed = json.loads(json.dumps(got))
    for node_id, node in trimmed.items():
        declared = {**info[node["class_type"]]["input"]["required"],
                    **info[node["class_type"]]["input"].get("optional", {})}
        old = saved.get(node_id, {}).get("inputs", {})
        for name in [n for n in node["inputs"] if n not in old and n in declared]:
            if node["inputs"][name] == declared_default(declared[name]):
                del node["inputs"][name]
    return trimmed


def old_prompt(comfy_page, name: str) -> dict:
    """The API prompt the page makes of the old UI workflow."""
    missing = comfy_page.load_graph(OLD / f"{name}.json")
    assert missing == [], f"old {name}.json: node types unknown to the page: {missing}"
    return comfy_page.graph_to_prompt()


def trained_config(host, prompt: dict, train_id: str, save_id: str, run_name: str, lora_name: str, tmp_path) -> dict:
    """Run the part of `prompt` that `save_id` (Save SCoFT LoRA) needs, training node `train_id` in run folder
    `run_name` (the copy in models/loras/old_workflows); the config in the metadata of the LoRA there."""
    prompt = upstream(json.loads(json.dumps(prompt)), save_id)
    prompt[train_id]["inputs"]["run_name"] = run_name
    prompt[save_id]["inputs"]["filename_prefix"] = f"old_workflows/{run_name}"  # not in the shipped folders
    client.run_workflow(prompt, host.url, tmp_path / run_name, timeout=300)
    lora = host.root.joinpath(*RUNS, run_name, lora_name)
    with safe_open(str(lora), framework="pt") as handle:
        return json.loads(handle.metadata()["scoft_config"])


@pytest.mark.parametrize("name", sorted(TRAINING))
def test_old_ui_workflow_loads_with_every_value_on_its_input(comfy_page, comfy_host, name):
    got = old_prompt(comfy_page, name)
    saved = json.loads((OLD / "api" / f"{name}.json").read_text(encoding="utf-8"))
    train = TRAINING[name][0]
    assert got[train]["class_type"] == saved[train]["class_type"] in ("SCoFTTrain", "SCoFTSFSLTrain")
    info = comfy_host.get_json("/object_info")
    assert prompt_differences(without_added_defaults(got, saved, info), saved) == []
    assert comfy_page.errors == []


@pytest.mark.parametrize("name", sorted(TRAINING))
def test_old_workflow_trains_with_the_config_of_the_shipped_one(comfy_page, comfy_host, tmp_path, name):
    train, settings, save, lora_name, fast = TRAINING[name]
    old = old_prompt(comfy_page, name)
    new = json.loads((API / f"{name}.json").read_text(encoding="utf-8"))
    assert SHORT[old[train]["class_type"]] == new[train]["class_type"]
    for prompt in (old, new):
        if NEGATIVES in prompt:
            prompt[NEGATIVES]["inputs"].update(FAST_NEGATIVES)
    set_inputs(old, (train,), **fast)
    set_inputs(new, (train, settings), **fast)

    before = trained_config(comfy_host, old, train, save, f"old_{name}", lora_name, tmp_path)
    after = trained_config(comfy_host, new, train, save, f"new_{name}", lora_name, tmp_path)
    assert before == after
    # The saved values arrived, not the loop's defaults.
    widgets = old[train]["inputs"]
    for key in ("batch_size", "alpha", "denoise_steps", "cfg"):
        assert before[key] == widgets[key] and widgets[key] != TrainConfig().to_dict()[key], key


def test_short_node_without_settings_trains_with_the_defaults(comfy_host, tmp_path):
    """No settings input = TrainConfig's defaults for everything SCoFT Train does not show, and previews every
    50 steps (the last step always gets one)."""
    shipped = json.loads((API / "scoft_finetune_compare.json").read_text(encoding="utf-8"))
    main = {"preset": "FT", "steps": 1, "rank": 4, "lr": 0.001, "seed": 7, "resume": False}
    prompt = {
        "1": shipped["1"], "2": shipped["2"],
        "3": {"class_type": "SCoFTTrainLoRA", "inputs": {"model": ["1", 0], "dataset": ["2", 0], **main}},
        "4": {"class_type": "SCoFTSaveLoRA", "inputs": {"lora": ["3", 0]}},  # prefix set by trained_config
    }
    config = trained_config(comfy_host, prompt, "3", "4", "no_settings", "scoft_lora.safetensors", tmp_path)
    assert config == json.loads(TrainConfig(preset="FT", steps=1, rank=4, lr=0.001, seed=7).to_json())
    previews = comfy_host.root.joinpath(*RUNS, "no_settings", "previews")
    assert sorted(p.name for p in previews.iterdir()) == ["step_000001.png"]
