"""Live previews: files every N steps, base vs trained columns beside the loss graph, and no effect on training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from scoft_train.config import TrainConfig
from scoft_train.data import load_ccub
from scoft_train.previews import CELL, PreviewSettings, dataset_prompts, preview_image, preview_path
from scoft_train.sample_data import CCUB_DEMO_DIR
from scoft_train.sfsl import SFSLConfig, load_image_folder
from scoft_train.sfsl.trainer import SFSLTrainer
from scoft_train.stages import run_trainer
from scoft_train.trainer import SCoFTTrainer

CONFIG = dict(preset="FT", steps=4, rank=4, alpha=8.0, lr=5e-3, grad_accum=1, batch_size=2)
PROMPTS = ("a house in Korea", "a meal in Nigeria")


def fast(every: int) -> PreviewSettings:
    return PreviewSettings(every=every, prompts=PROMPTS, steps=2, cfg=3.0)


@pytest.fixture(scope="module")
def dataset():
    return load_ccub(CCUB_DEMO_DIR, resolution=64)


def test_settings_and_prompts():
    assert PreviewSettings().due(5, 10) is False  # off by default
    every = PreviewSettings(every=3, prompts=("a",))
    assert [s for s in range(1, 11) if every.due(s, 10)] == [3, 6, 9, 10]  # and the last step
    with pytest.raises(ValueError, match="at least one prompt"):
        PreviewSettings(every=2)
    assert dataset_prompts(["a", "a", "b", "c", "d", "e", ""], count=3) == ("a", "c", "e")
    assert dataset_prompts(["a"], count=4) == ("a",)


def test_preview_cells_are_enlarged_without_blur():
    """A 16 px two-colour checker, enlarged 4x to the 64 px cell: exactly its two colours, each on half of
    the cell's pixels (any smoothing would mix them at every square's edge)."""
    ink, paper = (201, 31, 97), (17, 163, 59)
    board = np.zeros((16, 16, 3), dtype=np.uint8)
    board[:] = paper
    board[(np.indices((16, 16)).sum(axis=0) % 2) == 0] = ink
    cells = [Image.fromarray(board)]
    history = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    pixels = np.asarray(preview_image(cells, cells, ("a house",), 2, history)).reshape(-1, 3)
    per_colour = 2 * CELL * CELL // 2  # two cells (base, step 2), half of each
    assert CELL == 64 and [(pixels == colour).all(axis=1).sum() for colour in (ink, paper)] == [per_colour] * 2


def test_scoft_previews_are_written_and_shown_without_changing_training(tiny_bundle, dataset, tmp_path):
    shown = []
    with_previews = run_trainer(SCoFTTrainer(tiny_bundle, dataset, TrainConfig(**CONFIG), tmp_path / "on"), "l.safetensors",
                                previews=fast(2),
                                on_preview=lambda step, total, image: shown.append((step, total, image.size)))
    without = run_trainer(SCoFTTrainer(tiny_bundle, dataset, TrainConfig(**CONFIG), tmp_path / "off"), "l.safetensors")

    assert [(step, total) for step, total, _ in shown] == [(2, 4), (4, 4)]
    files = sorted(p.name for p in (tmp_path / "on" / "previews").iterdir())
    assert files == ["step_000002.png", "step_000004.png"]
    assert not (tmp_path / "off" / "previews").exists()
    assert with_previews.history == without.history
    on, off = load_file(with_previews.lora), load_file(without.lora)
    assert all(torch.equal(on[key], off[key]) for key in off)

    with Image.open(preview_path(tmp_path / "on", 4)) as image:
        assert image.size == shown[-1][2]
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] >= len(PROMPTS) * 64 and pixels.shape[1] > 2 * 64 + 300  # cells + loss graph
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert colours > 200  # real samples, not blank cells


def test_sfsl_previews_write_files_and_leave_the_bundle_unchanged(tiny_bundle, tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(2):
        pixels = (torch.rand(64, 64, 3, generator=generator) * 255).byte().numpy()
        Image.fromarray(pixels).save(refs / f"ref_{i}.png")
    config = SFSLConfig(class_name="dog", steps=1, rank=4, alpha=8.0, grad_accum=1, prior_loss_weight=0.0,
                        spurious_weight=0.0, lr=1e-2)
    before = {k: v.clone() for k, v in tiny_bundle.text_encoder.state_dict().items()}
    instances = load_image_folder(refs, config.instance_prompt, resolution=64)
    trainer = SFSLTrainer(tiny_bundle, instances, None, config, tmp_path / "run")
    run_trainer(trainer, "l.safetensors", previews=fast(1))
    assert sorted(p.name for p in (tmp_path / "run" / "previews").iterdir()) == ["step_000001.png"]
    after = tiny_bundle.text_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
