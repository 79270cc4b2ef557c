"""TOPIQ-NR through the real pyiqa, offline: a locally built random checkpoint, sockets blocked.

The checkpoint has the layout of pyiqa's release files ({"params": state_dict} of the
whole CFANet, as pyiqa's BaseModel.save_network writes them), so the loading path is
the one a user's downloaded cfanet_nr_koniq_res50 file takes; only the numbers are random.
"""

from __future__ import annotations

import pickle
import socket
import sys

import pytest
import torch

from scoft_train.sfsl.quality import topiq_scores


def _no_network(*args, **kwargs):
    raise OSError("network access in an offline test")


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _no_network)
        patch.setattr(socket.socket, "connect_ex", _no_network)
        yield


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two release-layout TOPIQ-NR files: random weights, and the same with the output bias raised by 1."""
    from pyiqa.archs import build_network
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    torch.manual_seed(0)  # the network pyiqa.create_metric("topiq_nr") builds, with no weights fetched
    net = build_network({**DEFAULT_CONFIGS["topiq_nr"]["metric_opts"], "pretrained": False, "backbone_pretrain": False})
    folder = tmp_path_factory.mktemp("topiq")
    state = net.state_dict()
    torch.save({"params": state}, folder / "topiq.pth")
    bias = [key for key in state if key.startswith("score_linear.") and key.endswith(".bias")][-1]  # the output layer
    state[bias] = state[bias] + 1
    torch.save({"params": state}, folder / "topiq_plus1.pth")
    return folder / "topiq.pth", folder / "topiq_plus1.pth"


def _images():
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, 64, 64, generator=generator), torch.rand(3, 64, 96, generator=generator)]


def test_scores_come_from_the_local_file_offline(checkpoints):
    plain, plus1 = checkpoints
    first, second = _images()
    scores, note = topiq_scores([first, second, first], plain)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    assert note == "quality: TOPIQ-NR (topiq.pth)"
    assert scores[2] == pytest.approx(float(scores[0]), abs=1e-5)  # same image, same score
    raised, _ = topiq_scores([first], plus1)  # the weights are the file's: its output bias moves the score
    assert raised[0] == pytest.approx(float(scores[0]) + 1, abs=1e-4)


def test_missing_or_wrong_weights_file_is_named(tmp_path):
    missing = tmp_path / "cfanet_nr_koniq_res50.pth"
    with pytest.raises(FileNotFoundError, match="cfanet_nr_koniq_res50.pth"):
        topiq_scores(_images(), missing)
    bare = tmp_path / "bare.pth"
    torch.save({"weight": torch.zeros(1)}, bare)
    with pytest.raises(ValueError, match="bare.pth is not a TOPIQ checkpoint"):
        topiq_scores(_images(), bare)
    foreign = tmp_path / "foreign.pth"  # right layout, another network: refused, not run half-random
    torch.save({"params": {"weight": torch.zeros(1)}}, foreign)
    with pytest.raises(RuntimeError, match="Missing key"):
        topiq_scores(_images(), foreign)


def test_weights_file_is_never_unpickled(tmp_path):
    pickled = tmp_path / "pickled.pth"
    torch.save({"params": {"x": torch.zeros(1)}, "object": _Opaque()}, pickled)
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only load failed"):
        topiq_scores(_images(), pickled)


class _Opaque:
    """An arbitrary class: loading it needs full unpickling."""


def test_skipped_with_reason(monkeypatch):
    scores, note = topiq_scores(_images(), None)
    assert scores is None and note.startswith("quality skipped: no TOPIQ weights given")
    assert "--quality-weights" in note
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # as if not installed
    scores, note = topiq_scores(_images(), "anything.pth")
    assert scores is None and note.startswith("quality skipped: pyiqa is not installed")
