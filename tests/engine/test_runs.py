"""A run folder belongs to one run: identity in checkpoints, resume checks, rotation, lock,
damaged checkpoints, a full disk, dead temp files (runfolder.py, checkpoint.py)."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time

import psutil
import pytest

from scoft_train.atomic import DiskFullError
from scoft_train.checkpoint import OtherRunError, read_identity
from scoft_train.config import TrainConfig
from scoft_train.data import load_ccub
from scoft_train.runfolder import LOCK_NAME, RunFolderError
from scoft_train.sample_data import CCUB_DEMO_DIR
from scoft_train.trainer import SCoFTTrainer
from scoft_train.weightfile import DamagedFileError

FAST = dict(preset="FT", grad_accum=1, rank=2, alpha=2.0, batch_size=1, lr=1e-3, allow_random_backbone=True)


@pytest.fixture(scope="module")
def dataset():
    return load_ccub(CCUB_DEMO_DIR, resolution=64)


def trainer(bundle, dataset, folder, **changes) -> SCoFTTrainer:
    return SCoFTTrainer(bundle, dataset, TrainConfig(**{**FAST, **changes}), folder)


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def contents(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


class Interrupt(Exception):
    pass


def stop_at(step_to_stop: int):
    def on_step(step, total, logs):
        if step == step_to_stop:
            raise Interrupt

    return on_step


def test_checkpoints_record_the_run_identity(tiny_bundle, dataset, tmp_path):
    run = trainer(tiny_bundle, dataset, tmp_path, steps=1, checkpoint_every=1)
    run.train()
    recorded = read_identity(tmp_path / "checkpoints" / "step_000001.safetensors")
    assert recorded.base_model == tiny_bundle.fingerprint
    assert recorded.datasets == {"dataset": dataset.fingerprint}
    assert recorded.config["rank"] == 2 and recorded.config["preset"] == "FT"
    assert run.run_identity().differences(recorded) == []
    longer = trainer(tiny_bundle, dataset, tmp_path, steps=9, checkpoint_every=3, checkpoint_limit=5)
    assert longer.run_identity().differences(recorded) == []


def test_a_fresh_run_in_a_used_folder_is_refused_and_the_old_run_survives(tiny_bundle, dataset, tmp_path):
    trainer(tiny_bundle, dataset, tmp_path, steps=2, checkpoint_every=1).train()
    checkpoints = tmp_path / "checkpoints"
    before = contents(checkpoints)
    assert sorted(before) == ["step_000001.safetensors", "step_000002.safetensors"]

    with pytest.raises(RunFolderError) as other:
        trainer(tiny_bundle, dataset, tmp_path, steps=3, checkpoint_every=1, seed=1).train()
    assert str(other.value).startswith(
        f"{tmp_path} already holds 2 checkpoint(s) of another run (seed: 1 now, 0 in the checkpoint), "
        "newest step_000002.safetensors. A run folder belongs to one run: resume it (CLI --resume latest, "
        "node resume on), use another output folder (CLI --out, node run_name), "
        f"or delete {checkpoints} to start afresh here"
    )
    with pytest.raises(RunFolderError, match="an earlier start of this same run"):
        trainer(tiny_bundle, dataset, tmp_path, steps=2, checkpoint_every=1).train()
    assert contents(checkpoints) == before
    assert not (tmp_path / LOCK_NAME).exists()


def test_resume_refuses_another_base_model_or_dataset(tiny_bundle, dataset, tmp_path):
    with pytest.raises(Interrupt):
        trainer(tiny_bundle, dataset, tmp_path, steps=3).train(stop_at(1))
    saved = tmp_path / "checkpoints" / "step_000001.safetensors"

    other_model = dataclasses.replace(tiny_bundle, fingerprint="0123456789abcdef")
    with pytest.raises(OtherRunError) as caught:
        trainer(other_model, dataset, tmp_path, steps=3).resume(saved)
    assert str(caught.value).startswith(
        f"{saved} belongs to another run: base model fingerprint: 0123456789abcdef now, "
        f"{tiny_bundle.fingerprint} in the checkpoint. Resume needs the same settings"
    )

    copy = shutil.copytree(CCUB_DEMO_DIR, tmp_path / "ccub")
    metadata = copy / "metadata.jsonl"
    lines = metadata.read_text(encoding="utf-8").splitlines()
    entry = json.loads(lines[0])
    entry["text"] += ", at dusk"
    metadata.write_text("\n".join([json.dumps(entry), *lines[1:]]) + "\n", encoding="utf-8")
    edited = load_ccub(copy, resolution=64)
    with pytest.raises(OtherRunError, match=(
        f"belongs to another run: dataset fingerprint: {edited.fingerprint} now, {dataset.fingerprint} in the "
        "checkpoint")):
        trainer(tiny_bundle, edited, tmp_path, steps=3).resume()
    with pytest.raises(OtherRunError, match="lr: 0.01 now, 0.001 in the checkpoint"):
        trainer(tiny_bundle, dataset, tmp_path, steps=3, lr=1e-2).resume()

    resumed = trainer(tiny_bundle, dataset, tmp_path, steps=2, checkpoint_every=2)
    assert resumed.resume() == 1


def test_rotation_and_resume_leave_another_runs_checkpoints_alone(tiny_bundle, dataset, tmp_path, caplog):
    with pytest.raises(Interrupt):
        trainer(tiny_bundle, dataset, tmp_path, steps=3, checkpoint_limit=1).train(stop_at(1))
    foreign = trainer(tiny_bundle, dataset, None, steps=50, seed=7)
    foreign_path = foreign.save_checkpoint(tmp_path / "checkpoints" / "step_000050.safetensors")
    foreign_bytes = foreign_path.read_bytes()

    run = trainer(tiny_bundle, dataset, tmp_path, steps=3, checkpoint_every=1, checkpoint_limit=1)
    with caplog.at_level(logging.WARNING):
        assert run.resume() == 1
    assert (f"skipping a checkpoint of another run: {foreign_path} belongs to another run: seed: 0 now, 7 in the "
            "checkpoint") in caplog.text
    run.train()
    assert names(tmp_path / "checkpoints") == ["step_000003.safetensors", "step_000050.safetensors"]
    assert foreign_path.read_bytes() == foreign_bytes

    seeded = trainer(tiny_bundle, dataset, tmp_path, steps=3, seed=3)
    with pytest.raises(OtherRunError, match=r"step_000050.safetensors belongs to another run: seed: 3 now, 7"):
        seeded.resume()


def test_resume_latest_falls_back_past_a_truncated_checkpoint(tiny_bundle, dataset, tmp_path, caplog):
    trainer(tiny_bundle, dataset, tmp_path, steps=2, checkpoint_every=1).train()
    newest = tmp_path / "checkpoints" / "step_000002.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    run = trainer(tiny_bundle, dataset, tmp_path, steps=2)
    with caplog.at_level(logging.WARNING):
        assert run.resume() == 1
    assert "skipping damaged checkpoint step_000002.safetensors" in caplog.text

    with pytest.raises(DamagedFileError) as caught:
        trainer(tiny_bundle, dataset, tmp_path, steps=2).resume(newest)
    assert str(caught.value).startswith(f"training checkpoint {newest} (")
    assert "is truncated or corrupt and cannot be read as safetensors" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__

    oldest = tmp_path / "checkpoints" / "step_000001.safetensors"
    oldest.write_bytes(b"\x00" * 3)
    with pytest.raises(DamagedFileError, match="every checkpoint in .* is truncated or corrupt "
                                               r"\(step_000002.safetensors, step_000001.safetensors\)"):
        trainer(tiny_bundle, dataset, tmp_path, steps=2).resume()


def write_lock(folder, pid: int, started: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": started}))


def test_a_second_live_run_is_refused_and_a_dead_ones_lock_is_taken_over(tiny_bundle, dataset, tmp_path, caplog):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path, live.pid, time.time())
        with pytest.raises(RunFolderError) as caught:
            trainer(tiny_bundle, dataset, tmp_path, steps=1).train()
        assert str(caught.value).startswith(
            f"{tmp_path} is in use by another training run (pid {live.pid} on {socket.gethostname()}, started ")
        assert "wait for it to finish or use another output folder (CLI --out, node run_name)" in str(caught.value)
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == live.pid
    finally:
        live.kill()
        live.wait()

    with caplog.at_level(logging.WARNING):
        trainer(tiny_bundle, dataset, tmp_path, steps=1).train()
    assert f"taking over the run lock {tmp_path / LOCK_NAME} of a process that is gone (pid {live.pid}" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_reused_pid_does_not_keep_a_lock_alive(tiny_bundle, dataset, tmp_path):
    """A lock written before its pid's current process started belongs to a process that is gone."""
    write_lock(tmp_path, os.getppid(), psutil.Process(os.getppid()).create_time() - 3600)
    trainer(tiny_bundle, dataset, tmp_path, steps=1).train()
    assert not (tmp_path / LOCK_NAME).exists()


def fill_disk_at(monkeypatch, name: str) -> list[str]:
    """Make the save of checkpoint `name` fail with ENOSPC; returns every file whose save was tried."""
    from safetensors.torch import save_file

    tried = []

    def save(tensors, filename, metadata=None):
        tried.append(os.path.basename(filename))
        if f".{name}." in os.path.basename(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr("safetensors.torch.save_file", save)
    return tried


def test_a_full_disk_stops_training_with_one_error_and_no_retry(tiny_bundle, dataset, tmp_path, monkeypatch):
    tried = fill_disk_at(monkeypatch, "step_000002.safetensors")
    with pytest.raises(DiskFullError) as caught:
        trainer(tiny_bundle, dataset, tmp_path, steps=3, checkpoint_every=1).train()
    target = tmp_path / "checkpoints" / "step_000002.safetensors"
    assert str(caught.value).startswith(f"no space left on the device while writing {target}: ")
    assert "free in" in str(caught.value) and caught.value.__suppress_context__
    assert sum(name.startswith(".step_000002.safetensors.") for name in tried) == 1
    assert names(tmp_path / "checkpoints") == ["step_000001.safetensors"]


def test_a_failed_save_on_interrupt_keeps_the_interrupt(tiny_bundle, dataset, tmp_path, monkeypatch, caplog):
    tried = fill_disk_at(monkeypatch, "step_000001.safetensors")
    with caplog.at_level(logging.ERROR), pytest.raises(Interrupt) as caught:
        trainer(tiny_bundle, dataset, tmp_path, steps=3).train(stop_at(1))
    assert caught.value.__context__ is None
    assert len(tried) == 1
    assert "training interrupted at step 1; its checkpoint was not saved: no space left on the device" in caplog.text


def test_dead_temp_files_are_removed_when_the_next_run_starts(tiny_bundle, dataset, tmp_path):
    with pytest.raises(Interrupt):
        trainer(tiny_bundle, dataset, tmp_path, steps=2).train(stop_at(1))
    (tmp_path / "previews").mkdir()
    dead = [tmp_path / "checkpoints" / ".step_000002.safetensors.k3j4h5g6.tmp",
            tmp_path / ".scoft_lora.safetensors.a_b_c_d_.tmp", tmp_path / "previews" / ".step_000001.png.x1y2z3w4.tmp"]
    for path in dead:
        path.write_bytes(b"\x00" * 1024)
    run = trainer(tiny_bundle, dataset, tmp_path, steps=2)
    run.resume()
    run.train()
    assert not any(path.exists() for path in dead)


def test_sfsl_runs_own_their_folder_too(tiny_bundle, tmp_path):
    from scoft_train.sfsl import SFSLConfig, SFSLTrainer, load_image_folder

    def sfsl(**changes) -> SFSLTrainer:
        settings = dict(class_name="house", rank=2, alpha=2.0, grad_accum=1, prior_loss_weight=0.0,
                        spurious_weight=0.0, steps=1, checkpoint_every=1)
        config = SFSLConfig(**{**settings, **changes})
        instances = load_image_folder(CCUB_DEMO_DIR / "images", config.instance_prompt, resolution=64)
        return SFSLTrainer(tiny_bundle, instances, None, config, tmp_path)

    first = sfsl()
    first.train()
    recorded = read_identity(tmp_path / "checkpoints" / "step_000001.safetensors")
    assert recorded.datasets == {"dataset": first.dataset.fingerprint} and recorded.config["class_name"] == "house"
    with pytest.raises(RunFolderError, match=r"another run \(rank: 4 now, 2 in the checkpoint\)"):
        sfsl(rank=4).train()
    with pytest.raises(OtherRunError, match='class_name: "tent" now, "house" in the checkpoint'):
        sfsl(class_name="tent").resume()
    assert sfsl(steps=2).resume() == 1
