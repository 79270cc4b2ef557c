"""Server-safe file access, on the real ComfyUI server through its HTTP API.

Every node input that names a file or folder reaches only ComfyUI's registered folders
(`ccub` roots + input/ for datasets, `annotators`, `feature_backbones`, `classifiers`
for weights), including a root added in extra_model_paths.yaml (helpers.write_extra_model_paths).
Paths outside (absolute, `..`, a symlink that resolves outside) are refused at validation
with a node error naming the input, the allowed roots and how to add one; nothing outside
is read or written. SCOFT_ALLOW_ANY_PATH=1 in the server's environment lifts this.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from scoft_train import client
from scoft_train.biaslab import BIASLAB_CCUB_DIR

from .helpers import FIXTURES, REPO_ROOT, set_inputs, start_comfy_host, stop_comfy_host, upstream

API = REPO_ROOT / "workflows" / "api"
OLD_API = FIXTURES / "old_workflows" / "api"
IMAGE = BIASLAB_CCUB_DIR / "images" / "velmora_house_0.png"


def make_dataset(folder: Path, images: int = 2) -> Path:
    """A small caption-style CCUB folder: <stem>.png + <stem>.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        shutil.copy2(IMAGE, folder / f"house_{i}.png")
        (folder / f"house_{i}.txt").write_text(f"a house in Velmora, view {i}", encoding="utf-8")
    return folder


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every entry under `folder` (not following symlinks): bytes and mtime in ns."""
    state = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        state[str(path.relative_to(folder))] = (path.read_bytes() if path.is_file() else b"", info.st_mtime_ns)
    state["."] = (b"", folder.lstat().st_mtime_ns)
    return state


def post_prompt(url: str, prompt: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def input_choices(host, node: str, name: str) -> list[str]:
    spec = host.get_json(f"/object_info/{node}")[node]["input"]["required"][name]
    assert isinstance(spec[0], list), f"{node}.{name} is not a dropdown: {spec[0]!r}"
    return spec[0]


def api_node(workflow: str, class_type: str) -> dict:
    prompt = json.loads((API / workflow).read_text(encoding="utf-8"))
    return next(node for node in prompt.values() if node["class_type"] == class_type)


def load_dataset_prompt(folder: str) -> dict:
    return {
        "1": {"class_type": "SCoFTLoadCCUBDataset", "inputs": {"folder": folder, "culture_terms": "", "resolution": 32}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}},
    }


def training_prompt(workflow: Path, train_id: str, **values) -> dict:
    """A workflow's training node and what it depends on (loaders, its Advanced Settings; the dataset straight
    from its loader), the values put on whichever of those nodes has the input, the loss plot previewed."""
    prompt = json.loads(workflow.read_text(encoding="utf-8"))
    if "dataset" in prompt[train_id]["inputs"]:
        prompt[train_id]["inputs"]["dataset"] = ["2", 0]  # straight from the loader: no negatives are made
    prompt = upstream(prompt, train_id)
    set_inputs(prompt, (train_id, *prompt), **values)
    prompt["99"] = {"class_type": "PreviewImage", "inputs": {"images": [train_id, 1]}}
    return prompt


# (workflow, training node id, settings node id): the shipped short nodes, and the deprecated full nodes
# of the older workflows (tests/host/fixtures/old_workflows), whose settings are on the node itself.
SCOFT_TRAINERS = [(API / "scoft_finetune_compare.json", "3", "11"), (OLD_API / "scoft_finetune_compare.json", "3", "3")]
SFSL_TRAINERS = [(API / "sfsl_spurious.json", "2", "9"), (OLD_API / "sfsl_spurious.json", "2", "2")]


def negatives_prompt(annotator_dir: str) -> dict:
    negatives = api_node("scoft_finetune_compare.json", "SCoFTGenerateNegatives")
    inputs = {**negatives["inputs"], "model": ["1", 0], "dataset": ["2", 0], "annotator_dir": annotator_dir,
              "depth_source": "midas"}
    inputs.pop("depth_images", None)
    return {
        "1": {"class_type": "SCoFTLoadModel", "inputs": api_node("scoft_finetune_compare.json", "SCoFTLoadModel")["inputs"]},
        "2": load_dataset_prompt("sample")["1"],
        "3": {"class_type": "SCoFTGenerateNegatives", "inputs": inputs},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
    }


def assert_refused(host, prompt: dict, node_id: str, input_name: str, roots: list[Path]) -> str:
    """The prompt is refused (HTTP 400, nothing queued) with a node error on `node_id` naming the input,
    every allowed root and how to add one."""
    code, answer = post_prompt(host.url, prompt)
    assert code == 400, f"expected a refusal, got HTTP {code}: {answer}"
    assert node_id in answer["node_errors"], answer
    details = " ".join(error["details"] for error in answer["node_errors"][node_id]["errors"])
    assert f"{input_name} '" in details, details  # the message names the input and the value seen
    assert "outside the allowed folders" in details, details
    for root in roots:
        assert str(root.resolve()) in details, (root, details)
    assert "extra_model_paths.yaml" in details and "SCOFT_ALLOW_ANY_PATH=1" in details, details
    assert host.get_json("/queue") == {"queue_running": [], "queue_pending": []}
    return details


def assert_confined(host, prompt: dict, node_id: str, input_name: str, roots: list[Path]) -> str:
    """As assert_refused, for a node that feeds an optional input (an Advanced Settings node). ComfyUI
    before 2024 validates at queue time only the nodes on required inputs, so there (this host) the node
    refuses when it runs, before any training reads a file; newer ComfyUI refuses at queue time. Either
    way the message names the node, the input, every allowed root and how to add one."""
    with pytest.raises((client.PromptRejected, client.ExecutionFailed)) as failure:
        client.run_workflow(prompt, host.url, host.root / "client_out", timeout=120)  # nothing comes back
    details = str(failure.value)
    assert f"node {node_id} (" in details and f"{input_name} '" in details, details
    assert "outside the allowed folders" in details, details
    for root in roots:
        assert str(root.resolve()) in details, (root, details)
    assert "extra_model_paths.yaml" in details and "SCOFT_ALLOW_ANY_PATH=1" in details, details
    return details


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A folder outside every ComfyUI root: a valid dataset plus weight files a prompt might name."""
    folder = make_dataset(tmp_path_factory.mktemp("outside") / "private_photos")
    (folder / "lpips_vgg.safetensors").write_bytes(b"\0" * 64)
    (folder / "dpt_hybrid-midas-501f0c75.pt").write_bytes(b"\0" * 64)
    (folder / "market.safetensors").write_bytes(b"\0" * 64)
    return folder


def dataset_roots(host) -> list[Path]:
    return [host.root / "input" / "ccub", host.extra_root / "ccub", host.root / "input"]


def outside_values(host, outside: Path, root: Path, name: str) -> dict[str, str]:
    """The three ways out: an absolute path, a relative one with '..', a symlink inside the root."""
    link = root / f"link_to_{name}"
    if not link.is_symlink():
        link.symlink_to(outside / name if name else outside)
    return {
        "absolute": str(outside / name),
        "dotdot": os.path.relpath(outside / name, root),
        "symlink": link.name,
    }


@pytest.mark.parametrize("way", ["absolute", "dotdot", "symlink"])
def test_dataset_folder_outside_is_refused_and_untouched(comfy_host, outside, way):
    root = comfy_host.root / "input" / "ccub"
    root.mkdir(parents=True, exist_ok=True)
    value = outside_values(comfy_host, outside, root, "")[way]
    before = snapshot(outside)

    assert_refused(comfy_host, load_dataset_prompt(value), "1", "folder", dataset_roots(comfy_host))
    for workflow, train, _ in SFSL_TRAINERS:
        assert_refused(comfy_host, training_prompt(workflow, train, instance_folder=value), train, "instance_folder",
                       dataset_roots(comfy_host))

    assert snapshot(outside) == before  # no negatives, metadata.jsonl or .bak written; nothing changed
    assert not (outside / "negatives").exists() and not (outside / "metadata.jsonl").exists()


@pytest.mark.parametrize("way", ["absolute", "dotdot", "symlink"])
def test_weights_outside_are_refused(comfy_host, outside, way):
    before = snapshot(outside)
    models = comfy_host.root / "models"
    # A deprecated full node holds the path itself; a short node's Advanced Settings feeds an optional input.
    refusal = {True: assert_refused, False: assert_confined}
    cases = [("annotators", "", negatives_prompt, "3", "annotator_dir", assert_refused)]
    for workflow, train, settings in SCOFT_TRAINERS:
        for input_name in ("perceptual_weights", "contrastive_weights"):
            cases.append(("feature_backbones", "lpips_vgg.safetensors",
                          lambda v, w=workflow, t=train, n=input_name: training_prompt(w, t, **{n: v}), settings,
                          input_name, refusal[settings == train]))
    for workflow, train, settings in SFSL_TRAINERS:
        cases.append(("classifiers", "market.safetensors",
                      lambda v, w=workflow, t=train: training_prompt(w, t, classifier_weights=v), settings,
                      "classifier_weights", refusal[settings == train]))
    for kind, name, build, node_id, input_name, refused in cases:
        root = models / kind
        root.mkdir(parents=True, exist_ok=True)
        value = outside_values(comfy_host, outside, root, name)[way]
        refused(comfy_host, build(value), node_id, input_name, [root, comfy_host.extra_root / kind])
    assert snapshot(outside) == before


def test_dropdowns_list_registered_folders_and_extra_root(comfy_host, outside):
    host, extra = comfy_host, comfy_host.extra_root
    make_dataset(host.root / "input" / "ccub" / "korea_2024")
    make_dataset(extra / "ccub" / "community" / "velmora")  # nested under a grouping folder
    (host.root / "input" / "ccub" / "link_out").symlink_to(outside)  # resolves outside: never offered
    models = host.root / "models"
    for path in (models / "feature_backbones" / "vgg16_trunk.safetensors", models / "annotators" / "midas" / "dpt_hybrid-midas-501f0c75.pt",
                 extra / "annotators" / "zoe" / "ZoeD_M12_N.pt", extra / "classifiers" / "market_resnet.safetensors",
                 extra / "feature_backbones" / "dino_vits16" / "config.json"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"{}")
    (extra / "classifiers" / "notes.txt").write_text("not weights")

    datasets = input_choices(host, "SCoFTLoadCCUBDataset", "folder")
    assert datasets[0] == "sample" and {"korea_2024", "community/velmora"} <= set(datasets), datasets
    assert "link_out" not in datasets and not any(d.split("/")[-1] == "negatives" for d in datasets), datasets
    for node in ("SCoFTSFSLTrainLoRA", "SCoFTSFSLTrain"):
        assert input_choices(host, node, "instance_folder") == datasets

    for node in ("SCoFTTrainSettings", "SCoFTTrain"):
        for name in ("perceptual_weights", "contrastive_weights"):
            weights = input_choices(host, node, name)
            assert weights[0] == "none" and {"vgg16_trunk.safetensors", "dino_vits16"} <= set(weights), weights
    annotators = input_choices(host, "SCoFTGenerateNegatives", "annotator_dir")
    assert annotators[0] == "annotators" and {"midas", "zoe"} <= set(annotators), annotators
    for node in ("SCoFTSFSLSettings", "SCoFTSFSLTrain"):
        classifiers = input_choices(host, node, "classifier_weights")
        assert "market_resnet.safetensors" in classifiers and "notes.txt" not in classifiers, classifiers


def test_datasets_in_roots_and_old_relative_folders_run(comfy_host, tmp_path):
    """A dataset from the default root, one from the extra root, and an older workflow's folder
    relative to input/ all load and preview their images."""
    make_dataset(comfy_host.root / "input" / "ccub" / "run_main", images=2)
    make_dataset(comfy_host.extra_root / "ccub" / "run_extra", images=3)
    make_dataset(comfy_host.root / "input" / "legacy_relative", images=1)
    for folder, count in (("run_main", 2), ("run_extra", 3), ("legacy_relative", 1)):
        paths = client.run_workflow(load_dataset_prompt(folder), comfy_host.url, tmp_path / folder, timeout=120)
        assert len(paths) == count, (folder, paths)


def test_opt_in_allows_an_absolute_path(tmp_path_factory, outside, tmp_path):
    """SCOFT_ALLOW_ANY_PATH=1 in the server's environment (read at each call): an absolute folder loads.
    A second server is started for it (about 20 s), since a running server's environment is fixed."""
    host = start_comfy_host(tmp_path_factory.mktemp("comfyui_any_path"), env={"SCOFT_ALLOW_ANY_PATH": "1"})
    try:
        paths = client.run_workflow(load_dataset_prompt(str(outside)), host.url, tmp_path, timeout=120)
        assert len(paths) == 2
    finally:
        stop_comfy_host(host)


@pytest.mark.parametrize("link", ["image", "negatives", "metadata_bak"])
def test_dataset_whose_links_lead_outside_is_refused(comfy_host, outside, link):
    """A dataset folder inside a root, but with a symlink that leads outside: an image (it would be read
    and previewed) or a write target (negatives/, metadata.jsonl.bak would be written through it)."""
    folder = make_dataset(comfy_host.root / "input" / "ccub" / f"linked_{link}")
    target, entry = {
        "image": (outside / "house_0.png", folder / "house_9.png"),
        "negatives": (outside, folder / "negatives"),
        "metadata_bak": (outside / "house_0.txt", folder / "metadata.jsonl.bak"),
    }[link]
    entry.symlink_to(target)
    if link == "image":
        (folder / "house_9.txt").write_text("a house in Velmora", encoding="utf-8")
    before = snapshot(outside)

    code, answer = post_prompt(comfy_host.url, load_dataset_prompt(folder.name))
    assert code == 400, answer
    details = answer["node_errors"]["1"]["errors"][0]["details"]
    assert f"folder: {entry.name} (a symlink)" in details or f"folder: {entry.name} " in details, details
    assert str(target.resolve()) in details and "outside the allowed folders" in details, details
    assert snapshot(outside) == before
