"""The ablation's outputs: markdown table, bar chart (PIL only) and example grids.

`results` maps a variant name ("base", "FT", ...) to {metric: value} over METRICS.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..atomic import atomic_save_image, atomic_write_text
from ..grid import compare_grid, load_font, save_grid
from ..plot import AXIS, BACKGROUND, GRIDLINE, PALETTE
from ..sampling import to_pil
from .world import MINORITY

# metric -> (column header, better direction)
METRICS = {
    "stereotype_rate_minority": ("stereotype rate, minority cultures", "lower"),
    "stereotype_rate": ("stereotype rate, all cultures", "lower"),
    "cultural_relevance": ("cultural relevance", "higher"),
    "description_fidelity": ("description fidelity", "higher"),
    "memorization": ("memorization", "lower"),
    "diversity": ("diversity", "higher"),
    "kid": ("KID (judge features)", "lower"),
    "seconds_per_image": ("seconds per image", "lower"),  # sampling wall time, measured in the run
}
COLORS = PALETTE + ((188, 189, 34), (23, 190, 207))  # up to 10 variants, each its own colour
CELL_SCALE = 3  # example grids show 32-px images at 96 px


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    """One row per variant, one column per metric ("(lower)"/"(higher)" is better)."""
    header = "| variant | " + " | ".join(f"{name} ({better})" for name, better in METRICS.values()) + " |"
    lines = [header, "|---" * (len(METRICS) + 1) + "|"]
    for variant, values in results.items():
        cells = []
        for key in METRICS:
            cell = f"{values[key]:.4f}" if key == "seconds_per_image" else f"{values[key]:.3f}"
            if key == "kid" and "kid_std" in values:
                cell = f"{values[key]:.4f} ± {values['kid_std']:.4f}"
            cells.append(cell)
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_culture_table(results: dict[str, dict], key: str, title: str) -> str:
    """A "### title" table: one row per variant, one column per culture (minority ones marked *)."""
    cultures = list(next(iter(results.values()))[key])
    header = "| variant | " + " | ".join(f"{c}{'*' if c in MINORITY else ''}" for c in cultures) + " |"
    rows = [f"| {variant} | " + " | ".join(f"{values[key][c]:.2f}" for c in cultures) + " |"
            for variant, values in results.items()]
    return f"### {title}\n\n" + "\n".join([header, "|---" * (len(cultures) + 1) + "|", *rows]) + "\n"


def bar_chart(results: dict[str, dict[str, float]], path: str | Path, panel: tuple[int, int] = (220, 200)) -> Path:
    """One panel per metric (own axis from 0), one bar per variant, legend on top (wrapped)."""
    variants, (width, height) = list(results), panel
    width = max(width, 30 * len(variants) + 24)  # room for each bar's value label
    columns = 4
    rows = math.ceil(len(METRICS) / columns)
    font, small = load_font(13), load_font(11)
    spots, x, y = [], 8, 8
    for variant in variants:
        step = 24 + int(font.getlength(variant)) + 12
        if x > 8 and x + step > columns * width:
            x, y = 8, y + 20
        spots.append((x, y))
        x += step
    legend_h = y + 20
    image = Image.new("RGB", (columns * width, legend_h + rows * height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for i, (variant, (x, y)) in enumerate(zip(variants, spots)):
        draw.rectangle([x, y, x + 12, y + 12], fill=COLORS[i % len(COLORS)])
        draw.text((x + 16, y - 1), variant, fill=AXIS, font=font)
    for index, (key, (title, better)) in enumerate(METRICS.items()):
        left, top = (index % columns) * width, legend_h + (index // columns) * height
        draw.text((left + 10, top + 4), f"{title} ({better})", fill=AXIS, font=small)
        values = [results[v][key] for v in variants]
        finite = [v for v in values if math.isfinite(v)]
        peak = max(max(finite, default=0.0), 1e-9) * 1.15
        x0, x1, y0, y1 = left + 12, left + width - 12, top + 26, top + height - 16
        draw.line([x0, y1, x1, y1], fill=AXIS)
        draw.line([x0, (y0 + y1) // 2, x1, (y0 + y1) // 2], fill=GRIDLINE)
        slot = (x1 - x0) / len(variants)
        for i, value in enumerate(values):
            if not math.isfinite(value):
                continue
            bar_top = y1 - (y1 - y0) * max(value, 0.0) / peak
            bx = x0 + i * slot + slot * 0.15
            draw.rectangle([bx, bar_top, bx + slot * 0.7, y1], fill=COLORS[i % len(COLORS)])
            draw.text((bx, bar_top - 13), f"{value:.2f}" if abs(value) >= 0.01 else f"{value:.3f}", fill=AXIS, font=small)
    atomic_save_image(image, Path(path))
    return Path(path)


def example_grid(images: torch.Tensor, prompts: list[str], per_prompt: int, path: str | Path,
                 columns: int = 6) -> Path:
    """Rows = prompts, columns = the first `columns` samples of each (images in [-1, 1],
    ordered prompt-major, `per_prompt` per prompt), upscaled CELL_SCALE x."""
    shown = min(columns, per_prompt)
    pil = _upscaled(images)
    cells = {f"sample {j + 1}": [pil[i * per_prompt + j] for i in range(len(prompts))] for j in range(shown)}
    return save_grid(compare_grid(cells, prompts), path)


def comparison_grid(by_variant: dict[str, torch.Tensor], prompts: list[str], rows: list[int], path: str | Path) -> Path:
    """Rows = the chosen sample indices (same seed in every column), columns = variants."""
    columns = {name: [_upscaled(images[i : i + 1])[0] for i in rows] for name, images in by_variant.items()}
    return save_grid(compare_grid(columns, [prompts[i] for i in rows]), path)


def _upscaled(images: torch.Tensor) -> list[Image.Image]:
    pictures = to_pil(((images + 1) / 2).permute(0, 2, 3, 1).cpu())
    return [p.resize((p.width * CELL_SCALE, p.height * CELL_SCALE), Image.NEAREST) for p in pictures]


def write_markdown(path: str | Path, title: str, tables: str, notes: list[str]) -> Path:
    """`# title`, the tables, then the notes as a bullet list."""
    atomic_write_text(Path(path), f"# {title}\n\n{tables}\n" + "\n".join(f"- {note}" for note in notes) + "\n")
    return Path(path)
