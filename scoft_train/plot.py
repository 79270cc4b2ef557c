"""Loss curves as a PNG drawn with PIL alone, and the loss history as JSON.

One panel per loss, each with its own y scale: the raw per-step values faint, an
exponential moving average (EMA) bold, the x axis in optimizer steps shared by all
panels. A loss that is computed only every k steps (the perceptual, contrastive and
spurious branches) has entries only at those steps and is drawn only there.
"""

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
FAINT = 0.3  # raw values: the line colour at this share, the rest white
MAX_SMOOTHING = 0.95
CLIP_QUANTILE = 0.02  # the y scale covers the EMA and the raw values between this quantile and 1 - it


@dataclass(frozen=True)
class Layout:
    """Pixel sizes of a loss figure: panel width and height, margins, font size."""

    width: int = 720
    panel_height: int = 170
    left: int = 64
    right: int = 16
    top: int = 22
    bottom: int = 22
    font_size: int = 12
    notes: bool = True  # panel titles say the smoothing and how often a branch loss was computed


FULL = Layout()
SMALL = Layout(width=320, panel_height=84, left=44, right=8, top=15, bottom=16, font_size=10, notes=False)


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


def smoothing_for(count: int) -> float:
    """EMA factor for a series of `count` points: 1 - 10/count, clipped to 0..MAX_SMOOTHING
    (about a tenth of the run per time constant; 0 = no smoothing for 10 points or fewer)."""
    return min(MAX_SMOOTHING, max(0.0, 1.0 - 10.0 / max(count, 1)))


def ema(values: list[float], smoothing: float) -> list[float]:
    """Bias-corrected exponential moving average (as TensorBoard draws it): the first
    value is not pulled toward 0. `smoothing` in 0..1 (0 = the values as given)."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    average, weight, out = 0.0, 0.0, []
    for value in values:
        average = smoothing * average + (1 - smoothing) * value
        weight = smoothing * weight + (1 - smoothing)
        out.append(average / weight)
    return out


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _label(value: float) -> str:
    return f"{value:.3g}"


def _series(history: list[dict], key: str) -> list[tuple[float, float]]:
    return [
        (float(entry["step"]), float(entry[key]))
        for entry in history
        if isinstance(entry.get(key), numbers.Real) and math.isfinite(float(entry[key]))
    ]


def _faint(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(round(FAINT * c + (1 - FAINT) * 255) for c in colour)


@dataclass(frozen=True)
class Frame:
    """Maps data (step, value) into the plot box (left, top, right, bottom) in pixels;
    values beyond the y ticks are drawn at the box's edge."""

    box: tuple[int, int, int, int]
    x_ticks: list[float]
    y_ticks: list[float]

    def to_px(self, x: float, y: float) -> tuple[float, float]:
        left, top, right, bottom = self.box
        fx = (x - self.x_ticks[0]) / (self.x_ticks[-1] - self.x_ticks[0])
        fy = min(1.0, max(0.0, (y - self.y_ticks[0]) / (self.y_ticks[-1] - self.y_ticks[0])))
        return left + fx * (right - left), bottom - fy * (bottom - top)


def _draw_axes(draw: ImageDraw.ImageDraw, frame: Frame, font, x_labels: bool) -> None:
    left, top, right, bottom = frame.box
    for tick in frame.x_ticks:
        px, _ = frame.to_px(tick, frame.y_ticks[0])
        draw.line([(px, top), (px, bottom)], fill=GRIDLINE)
        draw.line([(px, bottom), (px, bottom + 4)], fill=AXIS)
        if x_labels:
            draw.text((px, bottom + 5), _label(tick), fill=AXIS, font=font, anchor="mt")
    for tick in frame.y_ticks[:: max(1, len(frame.y_ticks) // 4)]:
        _, py = frame.to_px(frame.x_ticks[0], tick)
        draw.line([(left, py), (right, py)], fill=GRIDLINE)
        draw.line([(left - 4, py), (left, py)], fill=AXIS)
        draw.text((left - 6, py), _label(tick), fill=AXIS, font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline=AXIS)


def _draw_line(draw: ImageDraw.ImageDraw, pixels: list[tuple[float, float]], colour, width: int) -> None:
    if len(pixels) > 1:
        draw.line(pixels, fill=colour, width=width, joint="curve")
    for px, py in pixels if len(pixels) < 40 else ():
        draw.ellipse([px - width, py - width, px + width, py + width], fill=colour)


def _draw_panel(draw: ImageDraw.ImageDraw, key: str, line: list[tuple[float, float]], x_ticks: list[float],
                box: tuple[int, int, int, int], colour, font, x_labels: bool, entries: int, notes: bool) -> None:
    steps, raw = [x for x, _ in line], [y for _, y in line]
    smoothing = smoothing_for(len(raw))
    smooth = ema(raw, smoothing)
    low = min(min(smooth), _quantile(raw, CLIP_QUANTILE))
    high = max(max(smooth), _quantile(raw, 1 - CLIP_QUANTILE))
    frame = Frame(box=box, x_ticks=x_ticks, y_ticks=nice_ticks(low, high, count=4))
    _draw_axes(draw, frame, font, x_labels)
    _draw_line(draw, [frame.to_px(x, y) for x, y in line], _faint(colour), 1)
    _draw_line(draw, [frame.to_px(x, y) for x, y in zip(steps, smooth)], colour, 2)
    where = f"; computed at {len(steps)} of {entries} steps" if len(steps) < entries else ""
    title = f"{key}: {_label(smooth[-1])}" + (f" (faint: raw; bold: EMA {smoothing:.2f}{where})" if notes else "")
    draw.text((box[0], box[1] - 3), title, fill=AXIS, font=font, anchor="lb")


def draw_losses(history: list[dict], keys: list[str] | None = None, layout: Layout = FULL) -> Image.Image:
    """An RGB figure, one panel per loss key stacked top to bottom against "step".

    `history`: [{"step": int, "loss": float, "loss/ldm": float, ...}, ...]; a key missing
    from an entry (a branch not computed at that step) or non-finite there is not drawn.
    `keys` defaults to `loss_keys(history)`; keys without a finite value get no panel.
    Size: layout.width x (panels x layout.panel_height + layout.bottom).
    """
    keys = keys or loss_keys(history)
    series = {key: line for key in keys if (line := _series(history, key))}
    if not series:
        raise ValueError(f"no finite values to plot for keys {keys} in {len(history)} history entries")
    steps = [x for line in series.values() for x, _ in line]
    span = max(steps) - min(steps)
    x_ticks = nice_ticks(min(steps), max(steps), count=max(1, min(5, int(span))))  # whole steps only
    image = Image.new("RGB", (layout.width, len(series) * layout.panel_height + layout.bottom), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = load_font(layout.font_size)
    for index, (key, line) in enumerate(series.items()):
        top = index * layout.panel_height + layout.top
        box = (layout.left, top, layout.width - layout.right, (index + 1) * layout.panel_height - 4)
        _draw_panel(draw, key, line, x_ticks, box, PALETTE[keys.index(key) % len(PALETTE)], font,
                    x_labels=index == len(series) - 1, entries=len(history), notes=layout.notes)
    draw.text((4, image.height - 2), "step", fill=AXIS, font=font, anchor="ld")
    return image


def plot_losses(history: list[dict], path: str | os.PathLike, keys: list[str] | None = None,
                layout: Layout = FULL) -> Path:
    """`draw_losses` written as a PNG (atomic); returns the path."""
    image = draw_losses(history, keys, layout)
    target = Path(path)
    atomic_save_image(image, target)
    logger.info("wrote loss plot %s (%dx%d, %d history entries)", target, image.width, image.height, len(history))
    return target


def _finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def save_history_json(history: list[dict], path: str | os.PathLike) -> Path:
    """Write the history as JSON (atomic); non-finite numbers become null so the file is strict JSON."""
    clean = [{key: _finite_or_none(value) for key, value in entry.items()} for entry in history]
    target = Path(path)
    atomic_write_text(target, json.dumps(clean, indent=1) + "\n")
    return target
