"""Sampling from fixed seeds with and without a LoRA, the comparison grid and the loss plot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer
from PIL import Image

from scoft_train import grid as grid_module
from scoft_train.grid import compare_grid, save_grid
from scoft_train.plot import PALETTE, plot_losses, save_history_json
from scoft_train.sampling import SCHEDULERS, sample, sample_tensor

PROMPTS = ["a market street at dusk", "a portrait of a grandmother"]
FAST = dict(steps=3, cfg=5.0)


def test_same_seed_is_bit_identical(tiny_bundle):
    first = sample_tensor(tiny_bundle, PROMPTS, [11, 12], **FAST)
    again = sample_tensor(tiny_bundle, PROMPTS, [11, 12], **FAST)
    other = sample_tensor(tiny_bundle, PROMPTS, [13, 14], **FAST)
    assert first.shape == (2, 64, 64, 3) and first.dtype == torch.float32
    assert 0.0 <= first.min() and first.max() <= 1.0
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 0.05


def test_int_seed_counts_up_and_batching_does_not_matter(tiny_bundle):
    from_int = sample_tensor(tiny_bundle, PROMPTS, 11, batch_size=2, **FAST)
    one_by_one = sample_tensor(tiny_bundle, PROMPTS, [11, 12], batch_size=1, **FAST)
    assert torch.allclose(from_int, one_by_one, atol=1e-4)


def test_pil_output_and_size(tiny_bundle):
    images = sample(tiny_bundle, PROMPTS[:1], 0, size=(48, 32), **FAST)
    assert len(images) == 1 and images[0].size == (48, 32) and images[0].mode == "RGB"
    with pytest.raises(ValueError, match="multiples of 8"):
        sample(tiny_bundle, PROMPTS[:1], 0, size=60, **FAST)


def test_bad_arguments_are_refused(tiny_bundle):
    with pytest.raises(ValueError, match="2 prompts but 3 seeds"):
        sample_tensor(tiny_bundle, PROMPTS, [1, 2, 3], **FAST)
    with pytest.raises(ValueError, match="unknown"):
        sample_tensor(tiny_bundle, PROMPTS, 0, scheduler="plms", **FAST)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_samples(tiny_bundle, name):
    images = sample_tensor(tiny_bundle, PROMPTS[:1], 5, scheduler=name, **FAST)
    assert torch.isfinite(images).all() and images.std() > 0.01


def test_progress_reports_every_step(tiny_bundle):
    calls = []
    sample_tensor(tiny_bundle, PROMPTS * 2, 0, batch_size=3, on_step=lambda *a: calls.append(a), **FAST)
    assert [(step, total) for step, total, _ in calls] == [(i, 6) for i in range(1, 7)]
    assert [logs["batch"] for _, _, logs in calls] == [1, 1, 1, 2, 2, 2]


def test_lora_changes_images_but_not_the_bundle(tiny_bundle, lora_file):
    keys_before = set(tiny_bundle.unet.state_dict())
    baseline = sample_tensor(tiny_bundle, PROMPTS, 21, **FAST)
    with_lora = sample_tensor(tiny_bundle, PROMPTS, 21, lora_path=lora_file, **FAST)
    assert (with_lora - baseline).abs().max() > 0.02
    assert not any(isinstance(module, LoraLayer) for module in tiny_bundle.unet.modules())
    assert set(tiny_bundle.unet.state_dict()) == keys_before
    assert torch.equal(sample_tensor(tiny_bundle, PROMPTS, 21, **FAST), baseline)


def test_strength_zero_reproduces_the_baseline(tiny_bundle, lora_file):
    baseline = sample_tensor(tiny_bundle, PROMPTS, 21, **FAST)
    off = sample_tensor(tiny_bundle, PROMPTS, 21, lora_path=lora_file, lora_strength=0.0, **FAST)
    assert torch.equal(off, baseline)


def solid(colour, size=(64, 64)):
    return Image.new("RGB", size, colour)


def test_grid_layout_and_labels(tmp_path):
    rows = ["a woman looking at the Korean traditional palace in the snow", ""]
    columns = {"baseline": [solid((255, 0, 0)), solid((0, 255, 0))], "SCoFT": [solid((0, 0, 255)), solid((9, 9, 9))]}
    grid = compare_grid(columns, rows)
    pad, label_w = grid_module.PAD, grid_module.MIN_LABEL_WIDTH
    assert grid.width == label_w + 2 * (64 + pad) + pad
    header_h = grid.height - pad - 2 * (64 + pad)
    assert header_h > 10
    pixels = np.asarray(grid)
    for col, images in enumerate(columns.values()):
        for row, image in enumerate(images):
            x = label_w + pad + col * (64 + pad) + 32
            y = header_h + row * (64 + pad) + 32
            assert tuple(pixels[y, x]) == image.getpixel((0, 0))
    ink = (pixels < 128).all(axis=2)
    assert ink[header_h : header_h + 64, :label_w].sum() > 20  # first row's prompt
    assert ink[header_h + 64 + pad : header_h + 2 * 64 + pad, :label_w].sum() == 0  # empty label
    for col in range(2):
        x0 = label_w + pad + col * (64 + pad)
        assert ink[:header_h, x0 : x0 + 64].sum() > 5  # column header
    path = save_grid(grid, tmp_path / "grid.png")
    with Image.open(path) as reloaded:
        assert reloaded.format == "PNG" and reloaded.size == grid.size
    with pytest.raises(ValueError, match="'SCoFT' has 1 images but there are 2"):
        compare_grid({"baseline": columns["baseline"], "SCoFT": columns["SCoFT"][:1]}, rows)


def history(steps: int = 40) -> list[dict]:
    return [
        {
            "step": s,
            "loss/total": 1.0 / (s + 1),
            "loss/ldm": 0.5 * math.exp(-s / 10),
            "loss/contrastive": -0.2 + 0.01 * s,
            "lr": 1e-4,
        }
        for s in range(steps)
    ]


def test_plot_draws_one_line_per_loss(tmp_path):
    path = plot_losses(history(), tmp_path / "losses.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        colours = {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert len(colours) > 10
    assert set(PALETTE[:3]) <= colours
    assert PALETTE[3] not in colours  # "lr" is not a loss, so no fourth line


def test_history_json_is_strict(tmp_path):
    entries = history(3) + [{"step": 3, "loss/total": float("nan")}]
    path = save_history_json(entries, tmp_path / "history.json")
    loaded = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"non-standard {name}"))
    assert loaded[:3] == history(3)
    assert loaded[3] == {"step": 3, "loss/total": None}


def test_grid_enlarges_small_cells_without_blur():
    """32 px cells (the world model's) are shown at 64 px, pixel blocks kept sharp."""
    board = np.zeros((32, 32, 3), dtype=np.uint8)
    board[..., 0] = 255 * ((np.indices((32, 32)).sum(axis=0) % 2) == 0)
    board[..., 2] = 255 - board[..., 0]
    grid = compare_grid({"a": [Image.fromarray(board)]}, ["one row"])
    pixels = np.asarray(grid).reshape(-1, 3).astype(int)
    red = (pixels[:, 0] == 255) & (pixels[:, 1] == 0) & (pixels[:, 2] == 0)
    assert red.sum() == 32 * 32 // 2 * 4  # every red pixel became a 2x2 block
    mixed = (pixels[:, 1] == 0) & (pixels[:, 0] > 0) & (pixels[:, 2] > 0)
    assert not mixed.any()  # no red/blue blends: nearest neighbour, not bilinear
