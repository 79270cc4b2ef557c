"""Generate SCoFT Negatives inside the real ComfyUI server: files, metadata, re-run no-op, errors."""

from __future__ import annotations

import json
import shutil

from PIL import Image

from scoft_train import client
from scoft_train.biaslab import BIASLAB_CCUB_DIR


def negatives_prompt(folder, depth_source="dataset", k=1) -> dict:
    return {
        "1": {"class_type": "SCoFTLoadModel",
              "inputs": {"model": "default", "config": "auto", "prediction_type": "auto", "dtype": "float32",
                         "device": "auto"}},
        "2": {"class_type": "SCoFTLoadCCUBDataset",
              "inputs": {"folder": str(folder), "culture_terms": "", "resolution": 64}},
        "3": {"class_type": "SCoFTGenerateNegatives",
              "inputs": {"model": ["1", 0], "controlnet": "default", "dataset": ["2", 0],
                         "depth_source": depth_source, "annotator_dir": "", "k": k, "seed": 0, "steps": 2, "cfg": 4.5,
                         "conditioning_scale": 1.0, "control_end": 1.0, "batch_size": 8, "scheduler": "ddim"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 1], "filename_prefix": "negatives/preview"}},
    }


def small_dataset(tmp_path, images: int = 3):
    """The first few entries of the shipped bias-lab CCUB (it carries depth maps)."""
    folder = tmp_path / "ccub"
    shutil.copytree(BIASLAB_CCUB_DIR, folder)
    lines = (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()[:images]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder, [json.loads(line) for line in lines]


def test_negatives_node_writes_and_lists_negatives(comfy_host, tmp_path):
    folder, entries = small_dataset(comfy_host.root / "input" / "ccub" / tmp_path.name)  # inside a ccub root
    originals = {e["file_name"]: (folder / e["file_name"]).read_bytes() for e in entries}
    (preview,) = client.run_workflow(negatives_prompt(folder, k=2), comfy_host.url, tmp_path / "out", timeout=180)
    with Image.open(preview) as grid:
        assert grid.width > 64 and grid.height > 32
    listed = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    for entry in listed:
        assert len(entry["negative_imgpath"]) == 2, entry
        for relative in entry["negative_imgpath"]:
            assert relative.startswith("negatives/") and not relative.startswith("/")
            with Image.open(folder / relative) as negative:
                negative.load()
    assert (folder / "metadata.jsonl.bak").is_file()
    assert {name: (folder / name).read_bytes() for name in originals} == originals

    mtimes = {p: p.stat().st_mtime_ns for p in (folder / "negatives").iterdir()}
    prompt = negatives_prompt(folder, k=2)
    prompt["3"]["inputs"]["seed"] = 0
    prompt["3"]["inputs"]["batch_size"] = 4  # a changed input, so ComfyUI runs the node again
    client.run_workflow(prompt, comfy_host.url, tmp_path / "out2", timeout=180)
    assert {p: p.stat().st_mtime_ns for p in (folder / "negatives").iterdir()} == mtimes


def test_negatives_node_needs_depth_images_when_asked(comfy_host, tmp_path):
    folder, _ = small_dataset(comfy_host.root / "input" / "ccub" / tmp_path.name, images=1)
    before = (folder / "metadata.jsonl").read_bytes()
    try:
        client.run_workflow(negatives_prompt(folder, depth_source="depth_images input"), comfy_host.url,
                            tmp_path / "out", timeout=120)
    except client.ExecutionFailed as error:
        assert "needs the depth_images input connected" in str(error)
    else:
        raise AssertionError("the node ran without its depth images")
    assert (folder / "metadata.jsonl").read_bytes() == before
    assert not (folder / "negatives").exists()
