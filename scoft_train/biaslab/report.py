"""Example grids of the lab's measurements: 32-px samples upscaled (nearest neighbour) into
labelled grids. Images are float tensors [N, 3, 32, 32] in [-1, 1]."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..grid import compare_grid, save_grid
from ..sampling import to_pil

CELL_SCALE = 3  # example grids show 32-px images at 96 px


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
