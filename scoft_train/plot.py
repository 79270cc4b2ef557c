"""Loss curves as a PNG drawn with PIL alone, and the loss history as JSON."""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from .atomic import atomic_save_image, atomic_write_text
from .grid import load_font

logger = logging.getLogger(__name__)

PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
)
BACKGROUND = (255, 255, 255)
AXIS = (0, 0, 0)
GRIDLINE = (225, 225, 225)
MARGIN = (70, 20, 20, 45)  # left, top, right, bottom, px


def loss_keys(history: list[dict]) -> list[str]:
    """The keys to draw: those starting with "loss" if any, else every numeric key but "step"."""
    numeric = []
    for entry in history:
        for key, value in entry.items():
            if key != "step" and key not in numeric and isinstance(value, numbers.Real) and not isinstance(value, bool):
                numeric.append(key)
    losses = [key for key in numeric if key.startswith("loss")]
    return losses or numeric


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2, 2.5 or 5 x 10^k apart) covering [low, high]."""
    if not high > low:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step - 1e-9)) + 1)]


def _label(value: float) -> str:
    return f"{value:.3g}"


def _series(history: list[dict], key: str) -> list[tuple[float, float]]:
    return [
        (float(entry["step"]), float(entry[key]))
        for entry in history
        if key in entry and math.isfinite(float(entry[key]))
    ]


@dataclass(frozen=True)
class Frame:
    """Maps data (step, value) into the plot box (left, top, right, bottom) in pixels."""

    box: tuple[int, int, int, int]
    x_ticks: list[float]
    y_ticks: list[float]

    def to_px(self, x: float, y: float) -> tuple[float, float]:
        left, top, right, bottom = self.box
        fx = (x - self.x_ticks[0]) / (self.x_ticks[-1] - self.x_ticks[0])
        fy = (y - self.y_ticks[0]) / (self.y_ticks[-1] - self.y_ticks[0])
        return left + fx * (right - left), bottom - fy * (bottom - top)


def _draw_axes(draw: ImageDraw.ImageDraw, frame: Frame, font, height: int) -> None:
    left, top, right, bottom = frame.box
    for tick in frame.x_ticks:
        px, _ = frame.to_px(tick, frame.y_ticks[0])
        draw.line([(px, top), (px, bottom)], fill=GRIDLINE)
        draw.line([(px, bottom), (px, bottom + 5)], fill=AXIS)
        draw.text((px, bottom + 8), _label(tick), fill=AXIS, font=font, anchor="mt")
    for tick in frame.y_ticks:
        _, py = frame.to_px(frame.x_ticks[0], tick)
        draw.line([(left, py), (right, py)], fill=GRIDLINE)
        draw.line([(left - 5, py), (left, py)], fill=AXIS)
        draw.text((left - 8, py), _label(tick), fill=AXIS, font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline=AXIS)
    draw.text(((left + right) / 2, height - 4), "step", fill=AXIS, font=font, anchor="md")


def _draw_legend(draw: ImageDraw.ImageDraw, frame: Frame, font, keys: list[str]) -> None:
    _, top, right, _ = frame.box
    width = 40 + max(int(font.getlength(key)) for key in keys)
    draw.rectangle([right - width - 8, top + 1, right - 1, top + 8 + 16 * len(keys)], fill=BACKGROUND, outline=GRIDLINE)
    for index, key in enumerate(keys):
        y = top + 8 + index * 16
        draw.line([(right - width, y), (right - width + 24, y)], fill=PALETTE[index % len(PALETTE)], width=3)
        draw.text((right - width + 30, y), key, fill=AXIS, font=font, anchor="lm")


def plot_losses(
    history: list[dict],
    path: str | os.PathLike,
    keys: list[str] | None = None,
    size: tuple[int, int] = (800, 480),
) -> Path:
    """Draw one coloured line per loss key against "step", with axes, ticks and a legend; write a PNG.

    `history`: [{"step": int, "loss/ldm": float, ...}, ...]; non-finite values are skipped.
    `keys` defaults to `loss_keys(history)`.
    """
    keys = keys or loss_keys(history)
    series = {key: _series(history, key) for key in keys}
    points = [point for line in series.values() for point in line]
    if not points:
        raise ValueError(f"no finite values to plot for keys {keys} in {len(history)} history entries")
    width, height = size
    frame = Frame(
        box=(MARGIN[0], MARGIN[1], width - MARGIN[2], height - MARGIN[3]),
        x_ticks=nice_ticks(min(x for x, _ in points), max(x for x, _ in points)),
        y_ticks=nice_ticks(min(y for _, y in points), max(y for _, y in points)),
    )
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = load_font(12)
    _draw_axes(draw, frame, font, height)
    for index, line in enumerate(series.values()):
        colour = PALETTE[index % len(PALETTE)]
        pixels = [frame.to_px(x, y) for x, y in line]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2, joint="curve")
        elif pixels:
            px, py = pixels[0]
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    _draw_legend(draw, frame, font, list(series))
    target = Path(path)
    atomic_save_image(image, target)
    logger.info("wrote loss plot %s (%d series, %d points)", target, len(series), len(points))
    return target


def _finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def save_history_json(history: list[dict], path: str | os.PathLike) -> Path:
    """Write the history as JSON (atomic); non-finite numbers become null so the file is strict JSON."""
    clean = [{key: _finite_or_none(value) for key, value in entry.items()} for entry in history]
    target = Path(path)
    atomic_write_text(target, json.dumps(clean, indent=1) + "\n")
    return target
