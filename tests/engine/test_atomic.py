"""Atomic writes: file modes like a plain open(), one clear error on a full disk, dead temps removed."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import torch
from PIL import Image
from safetensors import SafetensorError

from scoft_train.atomic import (
    DiskFullError,
    atomic_save_image,
    atomic_save_safetensors,
    atomic_write_text,
    remove_stale_temps,
)


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_save_safetensors({"w": torch.zeros(2)}, tmp_path / "b.safetensors")
    atomic_save_image(Image.new("RGB", (2, 2)), tmp_path / "c.png")
    assert {p.name: mode(p) for p in tmp_path.iterdir()} == dict.fromkeys(["a.txt", "b.safetensors", "c.png"], expected)


def test_rewritten_files_keep_their_mode(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "metadata.jsonl"
    target.write_text("old\n")
    target.chmod(0o640)
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n" and mode(target) == 0o640
    target.chmod(0o604)
    atomic_write_text(target, "newer\n")
    assert mode(target) == 0o604


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
])
def test_disk_full_is_one_error_naming_the_file_and_the_free_space(tmp_path, monkeypatch, failure):
    def full(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise failure

    monkeypatch.setattr("safetensors.torch.save_file", full)
    target = tmp_path / "step_000002.safetensors"
    with pytest.raises(DiskFullError) as caught:
        atomic_save_safetensors({"w": torch.zeros(2)}, target)
    message = str(caught.value)
    assert f"no space left on the device while writing {target}:" in message
    assert f"free in {tmp_path}" in message and caught.value.errno == errno.ENOSPC
    assert caught.value.__suppress_context__ and caught.value.__cause__ is None
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_pass_through(tmp_path, monkeypatch):
    def denied(tensors, filename, metadata=None):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("safetensors.torch.save_file", denied)
    with pytest.raises(PermissionError):
        atomic_save_safetensors({"w": torch.zeros(2)}, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_remove_stale_temps_removes_only_our_temp_files(tmp_path):
    ours = [tmp_path / ".step_000002.safetensors.k3j_h5g6.tmp", tmp_path / ".loss_plot.png.abcdefgh.tmp"]
    others = [tmp_path / "notes.tmp", tmp_path / ".hidden.tmp", tmp_path / "step_000001.safetensors",
              tmp_path / ".x.toolong123.tmp"]
    for path in ours + others:
        path.write_bytes(b"x")
    assert sorted(remove_stale_temps(tmp_path)) == sorted(ours)
    assert sorted(tmp_path.iterdir()) == sorted(others)
    assert remove_stale_temps(tmp_path / "missing") == []
