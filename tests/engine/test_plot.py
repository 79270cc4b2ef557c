"""Readable loss curves: one panel per loss, faint raw values, bold EMA, branch losses only where computed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from scoft_train.plot import FULL, PALETTE, SMALL, _faint, draw_losses, ema, plot_losses, smoothing_for


def history(steps: int = 60, every: int = 5) -> list[dict]:
    entries = []
    for s in range(1, steps + 1):
        entry = {"step": s, "loss": 1.0 / s + 0.1 * (-1) ** s, "loss/ldm": 1000.0 + s, "lr": 1e-4}
        if s % every == 0:
            entry["loss/contrastive"] = -float(s)
        entries.append(entry)
    return entries


def colours(image: Image.Image) -> dict[tuple, int]:
    return {colour: count for count, colour in image.convert("RGB").getcolors(maxcolors=1 << 20)}


def test_ema_is_bias_corrected_and_smooths():
    assert ema([5.0, 5.0, 5.0], 0.9) == pytest.approx([5.0, 5.0, 5.0])  # not pulled toward 0
    zigzag = [(-1.0) ** i for i in range(100)]
    smooth = ema(zigzag, 0.9)
    assert max(abs(v) for v in smooth[50:]) < 0.1 < max(abs(v) for v in zigzag)
    assert ema([1.0, 2.0], 0.0) == [1.0, 2.0]
    assert smoothing_for(5) == 0.0 and smoothing_for(1000) == 0.95


def test_one_panel_per_loss_with_raw_faint_and_ema_bold():
    image = draw_losses(history())
    assert image.size == (FULL.width, 3 * FULL.panel_height + FULL.bottom)  # loss, ldm, contrastive; not lr
    seen = colours(image)
    for index in range(3):
        assert PALETTE[index] in seen and _faint(PALETTE[index]) in seen
    assert PALETTE[3] not in seen


def test_each_panel_has_its_own_scale():
    """ldm lives near 1000, loss near 0: each still spans most of its panel's height."""
    pixels = np.asarray(draw_losses(history(), keys=["loss", "loss/ldm"]))
    for index, colour in enumerate(PALETTE[:2]):
        band = pixels[index * FULL.panel_height : (index + 1) * FULL.panel_height]
        rows = np.where((band == colour).all(axis=2).any(axis=1))[0]
        assert rows.max() - rows.min() > FULL.panel_height // 3


def test_branch_loss_is_drawn_only_where_computed():
    """contrastive exists at steps 5, 10, ...: its bold line starts at step 5, not at step 1."""
    pixels = np.asarray(draw_losses(history(every=5), keys=["loss", "loss/contrastive"]))
    band = pixels[FULL.panel_height : 2 * FULL.panel_height]
    columns = np.where((band == PALETTE[1]).all(axis=2).any(axis=0))[0]
    step_px = (FULL.width - FULL.left - FULL.right) / 60  # x ticks run 0..60
    assert columns.min() >= FULL.left + 4 * step_px


def test_plot_writes_png_and_small_layout(tmp_path):
    path = plot_losses(history(), tmp_path / "plot.png", layout=SMALL)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width == SMALL.width
    with pytest.raises(ValueError, match="no finite values"):
        draw_losses([{"step": 1, "loss": float("nan")}])
