"""Side-by-side comparison grid: one row per prompt, one column per model (e.g. baseline | SCoFT)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_save_image

logger = logging.getLogger(__name__)

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
PAD = 6
MIN_LABEL_WIDTH = 160
MIN_CELL = 64


def load_font(size: int) -> ImageFont.ImageFont:
    """PIL's built-in font at `size` px (scalable on Pillow >= 10.1, fixed bitmap before)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def line_height(font: ImageFont.ImageFont) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return bottom - top + 2


def wrap_text(text: str, font: ImageFont.ImageFont, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` px; at most `max_lines` lines, the last one ending in '...' if cut."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
            continue
        while len(word) > 1 and font.getlength(word) > width:
            cut = len(word) - 1
            while cut > 1 and font.getlength(word[:cut]) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines[-1] = last + "..."
    return lines


def compare_grid(columns: dict[str, list[Image.Image]], row_labels: list[str]) -> Image.Image:
    """An RGB grid: column headers on top, each row's (wrapped) label at its left.

    `columns`: {header: one image per row}; all cells take the size of the largest image.
    Small images (e.g. the 32 px world model's) are enlarged by a whole factor (nearest
    neighbour, no blur) until their short side reaches MIN_CELL.
    Size: (label width + cols x (cell w + PAD) + PAD) x (header + rows x (cell h + PAD) + PAD).
    """
    if not columns:
        raise ValueError("compare_grid needs at least one column of images")
    for header, images in columns.items():
        if len(images) != len(row_labels):
            raise ValueError(f"column {header!r} has {len(images)} images but there are {len(row_labels)} row labels")
    cells = [image for images in columns.values() for image in images]
    zoom = max(1, -(-MIN_CELL // max((min(image.size) for image in cells), default=MIN_CELL)))
    if zoom > 1:
        columns = {h: [im.resize((im.width * zoom, im.height * zoom), Image.NEAREST) for im in ims]
                   for h, ims in columns.items()}
        cells = [image for images in columns.values() for image in images]
    cell_w = max((image.width for image in cells), default=64)
    cell_h = max((image.height for image in cells), default=64)
    font = load_font(max(12, cell_h // 12))
    step = line_height(font)
    label_w = max(MIN_LABEL_WIDTH, cell_w)
    header_h = step + 2 * PAD
    grid = Image.new(
        "RGB",
        (label_w + len(columns) * (cell_w + PAD) + PAD, header_h + len(row_labels) * (cell_h + PAD) + PAD),
        BACKGROUND,
    )
    draw = ImageDraw.Draw(grid)
    for col, (header, images) in enumerate(columns.items()):
        x = label_w + PAD + col * (cell_w + PAD)
        text = next(iter(wrap_text(header, font, cell_w, max_lines=1)), "")
        draw.text((x + (cell_w - font.getlength(text)) / 2, PAD), text, fill=INK, font=font)
        for row, image in enumerate(images):
            y = header_h + row * (cell_h + PAD)
            grid.paste(image.convert("RGB"), (x + (cell_w - image.width) // 2, y + (cell_h - image.height) // 2))
    for row, label in enumerate(row_labels):
        y = header_h + row * (cell_h + PAD)
        for i, text in enumerate(wrap_text(label, font, label_w - 2 * PAD, max_lines=max(1, cell_h // step))):
            draw.text((PAD, y + i * step), text, fill=INK, font=font)
    return grid


def save_grid(grid: Image.Image, path: str | os.PathLike) -> Path:
    """Write `grid` as a PNG, atomically; returns the path."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"grid path {target} must end in .png")
    atomic_save_image(grid, target)
    logger.info("wrote comparison grid %s (%dx%d)", target, grid.width, grid.height)
    return target
