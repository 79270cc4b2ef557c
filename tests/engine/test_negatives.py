"""Negatives: depth -> ControlNet-depth generation -> write-back, resume, kill safety, loaders."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scoft_train.config import TrainConfig
from scoft_train.controlnet import (
    build_tiny_controlnet, controlnet_to_ldm, load_controlnet, save_controlnet_single_file,
)
from scoft_train.data import load_ccub
from scoft_train.depth import load_depth_estimator
from scoft_train.negatives import (
    NegativeSettings, controlnet_pipeline, depth_from_dataset, depth_from_estimator, generate_negatives, list_images,
    negative_seed, render,
)
from scoft_train.sample_data import CCUB_DEMO_DIR
from scoft_train.trainer import SCoFTTrainer

REPO = Path(__file__).resolve().parents[2]
FAST = dict(k=1, steps=2, batch_size=1)


@pytest.fixture(scope="module")
def controlnet(tiny_bundle):
    return build_tiny_controlnet(tiny_bundle.unet)


@pytest.fixture(scope="module")
def controlnet_dir(controlnet, tmp_path_factory):
    folder = tmp_path_factory.mktemp("controlnet") / "tiny_controlnet"
    controlnet.save_pretrained(folder, safe_serialization=True)
    return folder


def fresh_copy(target: Path) -> Path:
    """The sample CCUB folder without its negatives, plus a grey `<stem>_depth.png` per image."""
    shutil.copytree(CCUB_DEMO_DIR, target)
    shutil.rmtree(target / "negatives")
    entries = [json.loads(line) for line in (target / "metadata.jsonl").read_text().splitlines()]
    for entry in entries:
        del entry["negative_imgpath"]
        image = target / entry["file_name"]
        Image.open(image).convert("L").save(image.with_name(f"{image.stem}_depth.png"))
    (target / "metadata.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return target


def pixels(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image)).int()


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tiny_bundle, controlnet, tmp_path_factory):
    """A fresh copy with K=2 negatives generated in batches of 3, and what happened."""
    root = fresh_copy(tmp_path_factory.mktemp("generated") / "ccub")
    before = (root / "metadata.jsonl").read_bytes()
    steps = []
    result = generate_negatives(
        tiny_bundle, controlnet, root, depth_from_dataset(), NegativeSettings(k=2, steps=3, batch_size=3),
        on_step=lambda done, total, logs: steps.append((done, total, logs["image"])), preview=root.parent / "grid.png",
    )
    return root, before, steps, result


def test_writes_k_negatives_per_image_and_lists_them(generated, tiny_bundle, controlnet):
    root, before, steps, result = generated
    items = list_images(root)
    assert len(result.generated) == 2 * len(items) == 16 and result.metadata_written
    assert [s[:2] for s in steps] == [(i, 16) for i in range(1, 17)]
    old = [json.loads(line) for line in before.decode().splitlines()]
    new = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    assert [e["file_name"] for e in new] == [e["file_name"] for e in old]
    for o, n in zip(old, new):
        stem = Path(o["file_name"]).stem
        assert n == {**o, "negative_imgpath": [f"negatives/{stem}_neg0.png", f"negatives/{stem}_neg1.png"]}
        for rel in n["negative_imgpath"]:
            with Image.open(root / rel) as image:
                assert image.size == (64, 64) and image.mode == "RGB"
        assert (root / o["file_name"]).read_bytes() == (CCUB_DEMO_DIR / o["file_name"]).read_bytes()
    assert (root / "metadata.jsonl.bak").read_bytes() == before
    assert result.dataset.records == load_ccub(root).records, "the returned dataset is what a re-read gives"
    assert Image.open(result.preview).size[1] > 8 * 64
    # the K negatives differ, and batching (3 here) changes nothing beyond float rounding
    a, b = (pixels(root / f"negatives/korea_house_neg{k}.png") for k in (0, 1))
    assert (a - b).abs().float().mean() > 5
    single = controlnet_pipeline(tiny_bundle, controlnet)
    item = items[0]
    depth = Image.open(root / "images/korea_house_depth.png").convert("RGB")
    alone = render(single, [item.text], [depth], [negative_seed(0, item.relpath, 0)], (64, 64),
                   NegativeSettings(k=2, steps=3))[0]
    assert (torch.from_numpy(np.asarray(alone)).int() - a).abs().max() <= 1


def test_rerun_is_a_noop_and_a_deleted_negative_comes_back_identical(tiny_bundle, controlnet, tmp_path):
    root = fresh_copy(tmp_path / "ccub")
    generate_negatives(tiny_bundle, controlnet, root, depth_from_dataset(), NegativeSettings(**FAST))
    first = snapshot(root)
    time.sleep(0.01)
    again = generate_negatives(tiny_bundle, controlnet, root, depth_from_dataset(), NegativeSettings(**FAST))
    assert again.generated == [] and again.already_there == 8 and not again.metadata_written
    assert snapshot(root) == first
    victim = root / "negatives/india_meal_neg0.png"
    victim.unlink()
    redo = generate_negatives(tiny_bundle, controlnet, root, depth_from_dataset(), NegativeSettings(**FAST))
    assert redo.generated == [victim] and not redo.metadata_written
    after = snapshot(root)
    assert after["negatives/india_meal_neg0.png"][1] == first["negatives/india_meal_neg0.png"][1]
    assert {k: v for k, v in after.items() if "india_meal_neg0" not in k} == {
        k: v for k, v in first.items() if "india_meal_neg0" not in k
    }


def test_cli_killed_mid_run_resumes_to_the_uninterrupted_result(tiny_bundle, controlnet, controlnet_dir, tmp_path):
    reference = fresh_copy(tmp_path / "reference")
    settings = NegativeSettings(k=1, steps=3, batch_size=1)
    generate_negatives(tiny_bundle, controlnet, reference, depth_from_dataset(), settings)
    root = fresh_copy(tmp_path / "killed")
    command = [sys.executable, "-m", "scoft_train", "negatives", "--model", "tiny", "--controlnet",
               str(controlnet_dir), "--data", str(root), "--depth", "dataset", "--k", "1", "--steps", "3",
               "--batch-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while process.poll() is None and time.monotonic() < deadline:
        if (root / "negatives").is_dir() and any(p.suffix == ".png" for p in (root / "negatives").iterdir()):
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = sorted(p.name for p in (root / "negatives").glob("*.png"))
    assert 0 < len(written) < 8, f"the kill did not land mid-run: {len(written)} files"
    for line in (root / "metadata.jsonl").read_text().splitlines():
        for rel in json.loads(line).get("negative_imgpath", []):
            with Image.open(root / rel) as image:
                image.load()
    for png in (root / "negatives").glob("*.png"):
        with Image.open(png) as image:
            image.load()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    files = sorted(p.name for p in (root / "negatives").iterdir())
    assert files == sorted(p.name for p in (reference / "negatives").iterdir())
    for name in files:
        assert (root / "negatives" / name).read_bytes() == (reference / "negatives" / name).read_bytes(), name
    assert (root / "metadata.jsonl").read_text() == (reference / "metadata.jsonl").read_text()


def test_sidecar_layout_gets_no_metadata_and_load_ccub_finds_the_negatives(tiny_bundle, controlnet, tmp_path):
    root = tmp_path / "sidecar"
    root.mkdir()
    for item in list_images(CCUB_DEMO_DIR)[:2]:
        shutil.copy(item.image, root / item.image.name)
        (root / f"{item.stem}.txt").write_text(item.text)
    with pytest.raises(FileNotFoundError, match="korea_house_depth.png"):
        generate_negatives(tiny_bundle, controlnet, root, depth_from_dataset(), NegativeSettings(k=1, steps=1))
    grey = depth_from_estimator(lambda image: image.convert("L").convert("RGB"))
    loaded = load_ccub(root, resolution=48, random_flip=True)
    result = generate_negatives(tiny_bundle, controlnet, loaded, grey, NegativeSettings(k=1, steps=1))
    assert not (root / "metadata.jsonl").exists()
    dataset = load_ccub(root, resolution=48, random_flip=True)
    assert [len(r.negatives) for r in dataset.records] == [1, 1]
    assert result.dataset.records == dataset.records and result.dataset.resolution == 48
    assert [len(r.negatives) for r in loaded.records] == [0, 0], "the input dataset is not changed"


def test_trainer_consumes_the_negatives(generated, tiny_bundle):
    root = generated[0]
    dataset = load_ccub(root, resolution=64)
    item = dataset[0]
    assert item["negatives"].shape == (2, 3, 64, 64)
    config = TrainConfig(preset="FT+MPC", grad_accum=1, rank=4, alpha=4, contrastive_every=1, denoise_steps=2,
                         allow_random_backbone=True)
    trainer = SCoFTTrainer(tiny_bundle, dataset, config)
    logs = trainer.train_step()
    assert "loss/contrastive" in logs and torch.isfinite(torch.tensor(logs["loss/contrastive"]))
    batch = {"pixels": item["pixel_values"][None], "negatives": [item["negatives"]],
             "text": [item["text"]], "generic_text": [item["generic_text"]]}
    z0 = trainer._latents(batch["pixels"])
    t = torch.tensor([500])
    z_t = tiny_bundle.scheduler.add_noise(z0, torch.randn(z0.shape, generator=torch.Generator().manual_seed(0)), t)
    cond = trainer._embed(batch["text"])
    with torch.no_grad():
        with_negatives = trainer._decoded_losses(batch, z_t, t, cond)["contrastive"]
        without = trainer._decoded_losses({**batch, "negatives": [item["negatives"][:0]]}, z_t, t, cond)["contrastive"]
    assert not torch.isclose(with_negatives, without)


def test_single_file_controlnet_equals_the_folder(controlnet, controlnet_dir, tmp_path):
    from_folder = load_controlnet(controlnet_dir).state_dict()
    single = tmp_path / "control_tiny_depth.safetensors"
    save_controlnet_single_file(controlnet, single)
    pth = tmp_path / "control_tiny_depth.pth"
    torch.save(controlnet_to_ldm(controlnet.state_dict(), controlnet.config), pth)
    for path in (single, pth):
        loaded = load_controlnet(path, config=controlnet_dir).state_dict()
        assert loaded.keys() == from_folder.keys()
        assert all(torch.equal(loaded[k], from_folder[k]) for k in loaded)
    with pytest.raises(ValueError, match="does not match the ControlNet config"):
        load_controlnet(single)  # the bundled SD 1.5 config: 320..1280 channels
    pickled = tmp_path / "evil.pth"
    torch.save({"control_model.x": argparse.Namespace(a=1)}, pickled)
    with pytest.raises(ValueError, match="weights_only"):
        load_controlnet(pickled, config=controlnet_dir)
    with pytest.raises(FileNotFoundError, match="models/controlnet"):
        load_controlnet(tmp_path / "nope.safetensors")


def test_midas_loads_through_controlnet_aux_from_a_local_folder(tmp_path, monkeypatch):
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    with pytest.raises(FileNotFoundError, match=r"dpt_hybrid-midas-501f0c75\.pt.*" + str(tmp_path)):
        load_depth_estimator("midas", tmp_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)
    torch.save({k: v.half() for k, v in model.state_dict().items()}, tmp_path / "dpt_hybrid-midas-501f0c75.pt")
    del model

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    estimate = load_depth_estimator("midas", tmp_path, detect_resolution=64)
    with Image.open(CCUB_DEMO_DIR / "images/korea_house.png") as image:
        depth = estimate(image)
    assert depth.size == (64, 64) and depth.mode == "RGB"
    low, high = depth.convert("L").getextrema()
    assert high > low
    torch.save({"model": argparse.Namespace(a=1)}, tmp_path / "ZoeD_M12_N.pt")
    with pytest.raises(ValueError, match="refused rather than unpickled"):
        load_depth_estimator("zoe", tmp_path)
