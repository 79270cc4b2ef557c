"""Side-by-side comparison grid: one row per prompt, one column per model (e.g. baseline | SCoFT | LoRA 0.5),
optionally several samples (seeds) per prompt and a verdict badge per cell."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from .atomic import atomic_path

logger = logging.getLogger(__name__)

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
PAD = 6
MIN_LABEL_WIDTH = 160
MIN_CELL = 64
PARAMETERS_KEY = "parameters"


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


Mark = tuple[str, tuple[int, int, int]]  # a cell's verdict: (one or two characters, RGB colour of its badge)


def fit_cell(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` resized to `size` (w, h) for a grid cell: enlarged by nearest neighbour (no blur, no
    invented detail), shrunk by Lanczos (antialiased, as a photo viewer shrinks)."""
    if image.size == size:
        return image
    enlarging = size[0] >= image.width and size[1] >= image.height
    return image.resize(size, Image.NEAREST if enlarging else Image.LANCZOS)


def _enlarged(columns: dict[str, list[Image.Image]], min_cell: int) -> dict[str, list[Image.Image]]:
    """Every cell enlarged by one whole factor (nearest neighbour, no blur) until the smallest short side reaches `min_cell`."""
    shortest = min((min(image.size) for images in columns.values() for image in images), default=min_cell)
    zoom = max(1, -(-min_cell // shortest))
    if zoom == 1:
        return columns
    return {h: [im.resize((im.width * zoom, im.height * zoom), Image.NEAREST) for im in ims] for h, ims in columns.items()}


def _draw_mark(draw: ImageDraw.ImageDraw, mark: Mark, corner: tuple[int, int], font) -> None:
    """A filled badge with white text whose top-right corner is `corner`."""
    text, colour = mark
    side = max(line_height(font), int(font.getlength(text)) + 4)
    right, top = corner
    draw.rectangle([right - side, top, right - 1, top + side - 1], fill=colour)
    draw.text((right - side / 2, top + side / 2), text, fill=BACKGROUND, font=font, anchor="mm")


def compare_grid(
    columns: dict[str, list[Image.Image]],
    row_labels: list[str],
    marks: dict[str, list[Mark | None]] | None = None,
    per_row: int = 1,
    min_cell: int = MIN_CELL,
) -> Image.Image:
    """An RGB grid: column headers on top, each row's (wrapped) label at its left.

    `columns`: {header: images}, `per_row` images per row label, row-major (row r holds
    images r * per_row .. r * per_row + per_row - 1). With per_row > 1 the columns are
    grouped by sample: a "sample j" header over one cell of every column, so the columns
    from the same seed stand side by side. `marks`: {header: one Mark or None per image},
    drawn as a small badge in the cell's top-right corner. All cells take the size of the
    largest image; small images are enlarged by a whole factor (nearest neighbour, no
    blur) until their short side reaches `min_cell`.
    Size: (label width + per_row x (cols x (cell w + PAD) + group gap) + PAD) x (header + rows x (cell h + PAD) + PAD).
    """
    if not columns:
        raise ValueError("compare_grid needs at least one column of images")
    if per_row < 1:
        raise ValueError(f"per_row must be >= 1, got {per_row}")
    for header, images in {**columns, **(marks or {})}.items():
        if len(images) != len(row_labels) * per_row:
            raise ValueError(f"column {header!r} has {len(images)} images but there are {len(row_labels)} row labels "
                             f"x {per_row} per row = {len(row_labels) * per_row}")
    columns = _enlarged(columns, min_cell)
    cells = [image for images in columns.values() for image in images]
    cell_w = max((image.width for image in cells), default=64)
    cell_h = max((image.height for image in cells), default=64)
    font = load_font(max(12, cell_h // 12))
    small = load_font(max(10, cell_h // 10))
    step = line_height(font)
    label_w = max(MIN_LABEL_WIDTH, cell_w)
    gap = 0 if per_row == 1 else 3 * PAD
    group_h = 0 if per_row == 1 else step + PAD
    header_h = group_h + step + 2 * PAD
    group_w = len(columns) * (cell_w + PAD) + gap
    grid = Image.new(
        "RGB",
        (label_w + per_row * group_w - gap + PAD, header_h + len(row_labels) * (cell_h + PAD) + PAD),
        BACKGROUND,
    )
    draw = ImageDraw.Draw(grid)
    for sample in range(per_row if per_row > 1 else 0):
        x = label_w + PAD + sample * group_w
        width = group_w - gap - PAD
        draw.text((x + width / 2, PAD), f"sample {sample + 1}", fill=INK, font=font, anchor="mt")
        draw.line([(x, PAD + step), (x + width, PAD + step)], fill=INK)
    for sample in range(per_row):
        for col, (header, images) in enumerate(columns.items()):
            x = label_w + PAD + sample * group_w + col * (cell_w + PAD)
            text = next(iter(wrap_text(header, font, cell_w, max_lines=1)), "")
            draw.text((x + (cell_w - font.getlength(text)) / 2, group_h + PAD), text, fill=INK, font=font)
            for row in range(len(row_labels)):
                image = images[row * per_row + sample]
                y = header_h + row * (cell_h + PAD)
                grid.paste(image.convert("RGB"), (x + (cell_w - image.width) // 2, y + (cell_h - image.height) // 2))
                mark = (marks or {}).get(header, [None] * len(images))[row * per_row + sample]
                if mark is not None:
                    _draw_mark(draw, mark, (x + cell_w, y), small)
    for row, label in enumerate(row_labels):
        y = header_h + row * (cell_h + PAD)
        for i, text in enumerate(wrap_text(label, font, label_w - 2 * PAD, max_lines=max(1, cell_h // step))):
            draw.text((PAD, y + i * step), text, fill=INK, font=font)
    return grid


def repeated_rows(labels: list[str]) -> tuple[list[str], int]:
    """Runs of identical consecutive labels as one row each: (row labels, images per row) when
    every run has the same length (e.g. a prompt written three times for three seeds), else (labels, 1)."""
    runs: list[list[str]] = []
    for label in labels:
        if runs and runs[-1][0] == label:
            runs[-1].append(label)
        else:
            runs.append([label])
    lengths = {len(run) for run in runs}
    return ([run[0] for run in runs], lengths.pop()) if len(lengths) == 1 else (list(labels), 1)


def save_grid(grid: Image.Image, path: str | os.PathLike, parameters: dict | None = None) -> Path:
    """Write `grid` as a PNG, atomically; returns the path. `parameters` (JSON-able: model,
    LoRA, strengths, prompts, seeds, steps, cfg, ...) go into the PNG's text metadata under
    the key "parameters", as JSON, the way ComfyUI's SaveImage stores "prompt" and "workflow"."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"grid path {target} must end in .png")
    info = PngInfo()
    if parameters is not None:
        info.add_text(PARAMETERS_KEY, json.dumps(parameters))
    with atomic_path(target) as tmp:
        grid.save(tmp, format="PNG", pnginfo=info)
    logger.info("wrote comparison grid %s (%dx%d)", target, grid.width, grid.height)
    return target
