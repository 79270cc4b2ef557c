"""Data-parallel training (scoft_train/distributed.py): two gloo processes on the CPU train the
LoRA that one process trains with the same global batch and seed, resume from the same
checkpoint, and only rank 0 writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scoft_train import distributed
from scoft_train.cli import main
from scoft_train.config import TrainConfig
from scoft_train.data import load_ccub
from scoft_train.sample_data import CCUB_DEMO_DIR
from scoft_train.trainer import SCoFTTrainer

ROOT = Path(__file__).resolve().parents[2]
RUN = ["train", "--model", "tiny", "--data", str(CCUB_DEMO_DIR), "--preset", "FT+M", "--steps", "4",
       "--checkpoint-every", "2", "--batch-size", "2", "--grad-accum", "2", "--rank", "4", "--alpha", "4",
       "--lr", "0.001", "--random-crop", "--flip", "--seed", "7"]


def test_two_processes_resume_and_train_the_one_process_lora(tmp_path):
    """One process trains 4 steps (checkpoint at 2 and 4); two processes resume from its step-2
    checkpoint and train steps 3-4 with the same global batch: same LoRA, optimizer state and
    losses within float tolerance, and the run folder holds one run's files, nothing more."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*RUN, "--out", str(one)]) == 0
    (two / "checkpoints").mkdir(parents=True)
    shutil.copy(one / "checkpoints" / "step_000002.safetensors", two / "checkpoints")

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "scoft_train", *RUN, "--out", str(two), "--resume", "latest",
                             "--num-processes", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("LoRA: ") == 1  # rank 0 alone reports (and writes)

    lora_one, lora_two = load_file(one / "scoft_lora.safetensors"), load_file(two / "scoft_lora.safetensors")
    assert lora_one.keys() == lora_two.keys()
    for key in lora_one:
        torch.testing.assert_close(lora_two[key], lora_one[key], atol=1e-5, rtol=0)
    state_one = load_file(one / "checkpoints" / "step_000004.safetensors")
    state_two = load_file(two / "checkpoints" / "step_000004.safetensors")
    for key in state_one:
        if key.startswith(("lora.", "optim.")) and state_one[key].is_floating_point():
            torch.testing.assert_close(state_two[key], state_one[key], atol=1e-5, rtol=1e-4)
    history_one = json.loads((one / "loss_history.json").read_text())
    history_two = json.loads((two / "loss_history.json").read_text())
    assert [h["step"] for h in history_two] == [1, 2, 3, 4]
    for a, b in zip(history_one, history_two):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6) for k in a)
    assert sorted(p.relative_to(two).as_posix() for p in two.rglob("*")) == [
        "checkpoints", "checkpoints/step_000002.safetensors", "checkpoints/step_000004.safetensors",
        "loss_history.json", "loss_plot.png", "scoft_lora.safetensors",
    ]


@pytest.fixture
def rank1(monkeypatch):
    """The loop believes it is rank 1 of 2 (no collective is called by what these tests use)."""
    group = distributed.ProcessGroup(rank=1, world_size=2)
    monkeypatch.setattr(distributed, "context", lambda: group)
    return group


def _trainer(bundle, out=None, **overrides):
    dataset = load_ccub(CCUB_DEMO_DIR, resolution=bundle.resolution)
    config = TrainConfig(**{"preset": "FT", "steps": 2, "rank": 4, "alpha": 4.0, "batch_size": 2, **overrides})
    return SCoFTTrainer(bundle, dataset, config, out)


def test_only_rank_0_writes(tiny_bundle, tmp_path, rank1):
    trainer = _trainer(tiny_bundle, tmp_path / "run")
    trainer.save_checkpoint()
    trainer.export_lora(tmp_path / "run" / "lora.safetensors")
    assert not (tmp_path / "run").exists()


def test_global_batch_must_split_over_the_processes(tiny_bundle, rank1):
    with pytest.raises(ValueError, match="does not split over 2 processes"):
        _trainer(tiny_bundle, batch_size=3)


def test_each_rank_keeps_its_slice_of_the_global_draws(tiny_bundle, rank1):
    """Rank 1 of 2 with global batch 4: its batch, noise and timesteps are rows 2-3 of what one
    process draws from the same generator state (and rows 6-7 of a second stacked group)."""
    trainer = _trainer(tiny_bundle, batch_size=4)
    state = trainer.generator.get_state()
    noise = trainer.randn((2, 4, 8, 8))
    t = trainer.randint(1000, (2,))
    stacked = trainer.randn((4, 3))
    reference = torch.Generator()
    reference.set_state(state)
    torch.testing.assert_close(noise, torch.randn((4, 4, 8, 8), generator=reference)[2:])
    assert torch.equal(t, torch.randint(1000, (4,), generator=reference)[2:])
    assert torch.equal(stacked, torch.randn((8, 3), generator=reference)[[2, 3, 6, 7]])
    batch = distributed.local_batch({"pixels": torch.arange(4), "text": list("abcd"), "k": 5}, 4,
                                    distributed.ProcessGroup(1, 2))
    assert batch["pixels"].tolist() == [2, 3] and batch["text"] == ["c", "d"] and batch["k"] == 5


def test_num_processes_is_dropped_from_the_relaunched_command():
    argv = ["train", "--num-processes", "2", "--out", "x", "--num-processes=3"]
    assert distributed.without_option(argv, "--num-processes") == ["train", "--out", "x"]
