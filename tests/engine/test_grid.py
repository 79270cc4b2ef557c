"""The comparison grid for looking: sharp enlarged cells, several samples per prompt, strength columns,
verdict badges, and the parameters in the PNG's text metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scoft_train import grid as grid_module
from scoft_train.grid import PARAMETERS_KEY, compare_grid, fit_cell, save_grid
from scoft_train.stages import GRID_CELL, compare

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(colour, side=32):
    return Image.new("RGB", (side, side), colour)


def test_samples_of_one_prompt_are_grouped_by_seed_with_each_column_inside():
    """Two rows x two samples, columns baseline | SCoFT: sample j of every column stands side by side."""
    columns = {"baseline": [solid((10 * i, 0, 0)) for i in range(4)], "SCoFT": [solid((0, 10 * i, 0)) for i in range(4)]}
    grid = compare_grid(columns, ["row a", "row b"], per_row=2, min_cell=64)
    pad, label_w, gap = grid_module.PAD, grid_module.MIN_LABEL_WIDTH, 3 * grid_module.PAD
    group_w = 2 * (64 + pad) + gap
    assert grid.width == label_w + 2 * group_w - gap + pad
    header_h = grid.height - pad - 2 * (64 + pad)
    pixels = np.asarray(grid)
    for row in range(2):
        for sample in range(2):
            for col, images in enumerate(columns.values()):
                x = label_w + pad + sample * group_w + col * (64 + pad) + 32
                y = header_h + row * (64 + pad) + 32
                assert tuple(pixels[y, x]) == images[row * 2 + sample].getpixel((0, 0))
    ink = (pixels < 128).all(axis=2)
    assert ink[: header_h // 2, label_w:].sum() > 10  # "sample 1", "sample 2" over the groups


def test_cells_are_enlarged_sharply_and_marks_sit_in_the_corner():
    board = np.zeros((32, 32, 3), dtype=np.uint8)
    board[::2, ::2] = 255
    cells = {"a": [Image.fromarray(board), solid(BLUE)]}
    grid = compare_grid(cells, ["x", "y"], marks={"a": [None, ("S", RED)]}, min_cell=128)
    image = np.asarray(grid)
    pad, label_w = grid_module.PAD, grid_module.MIN_LABEL_WIDTH
    header_h = grid.height - pad - 2 * (128 + pad)
    first = image[header_h : header_h + 128, label_w + pad : label_w + pad + 128]
    assert set(np.unique(first)) <= {0, 255}  # 4x nearest neighbour: only the board's two values
    assert (first[:4, :4] == 255).all() and (first[4:8, 4:8] == 0).all()
    second = image[header_h + 128 + pad : header_h + 2 * 128 + pad, label_w + pad : label_w + pad + 128]
    assert tuple(second[2, -3]) == RED and tuple(second[-3, 2]) == BLUE  # badge top right, cell elsewhere
    assert tuple(first[2, -3]) != RED  # no verdict, no badge


def test_fit_cell_enlarges_sharply_and_shrinks_antialiased():
    """A small original beside larger negatives keeps its pixels; a large photo is averaged down, not aliased."""
    board = np.zeros((8, 8, 3), dtype=np.uint8)
    board[::2, ::2] = 255
    enlarged = np.asarray(fit_cell(Image.fromarray(board), (32, 32)))
    assert set(np.unique(enlarged)) <= {0, 255} and (enlarged[:4, :4] == 255).all()
    fine = np.zeros((64, 64, 3), dtype=np.uint8)
    fine[::2, ::2] = 255  # a quarter of the pixels white: mean 63.75
    shrunk = np.asarray(fit_cell(Image.fromarray(fine), (16, 16)))
    assert 40 < shrunk.mean() < 90 and shrunk.std() < 20  # grey, as a viewer shows it; nearest would keep 0/255


def test_mismatched_counts_are_refused():
    with pytest.raises(ValueError, match="2 row labels x 2 per row = 4"):
        compare_grid({"a": [solid(RED)] * 3}, ["x", "y"], per_row=2)


def test_parameters_go_into_png_text(tmp_path):
    path = save_grid(solid(RED), tmp_path / "g.png", {"seed": 3, "prompts": ["a house"]})
    with Image.open(path) as image:
        assert json.loads(image.text[PARAMETERS_KEY]) == {"seed": 3, "prompts": ["a house"]}


def test_compare_stage_samples_strength_columns_and_records_them(tiny_bundle, lora_file, tmp_path):
    scored = []

    def scorer(prompts, pixels):
        scored.append((len(prompts), tuple(pixels.shape)))
        return [("S", RED)] * len(prompts)

    path = compare(tiny_bundle, lora_file, ["a house", "a meal"], tmp_path / "c.png", seed=5, seeds_per_prompt=2,
                   extra_strengths=(0.5,), scorer=scorer, steps=2, cfg=3.0)
    assert scored == [(4, (4, 64, 64, 3))] * 3  # baseline, LoRA 0.5, SCoFT
    with Image.open(path) as image:
        parameters = json.loads(image.text[PARAMETERS_KEY])
        assert image.height > 2 * GRID_CELL and image.width > 6 * GRID_CELL
    assert parameters["strengths"] == {"baseline": 0.0, "LoRA 0.5": 0.5, "SCoFT": 1.0}
    assert parameters["seeds"] == [[5, 6], [7, 8]] and parameters["steps"] == 2 and parameters["cfg"] == 3.0
    assert parameters["lora"] == str(lora_file) and parameters["prompts"] == ["a house", "a meal"]


def test_repeated_prompts_become_one_row_with_several_samples():
    assert grid_module.repeated_rows(["a", "a", "b", "b"]) == (["a", "b"], 2)
    assert grid_module.repeated_rows(["a", "a", "a", "b"]) == (["a", "a", "a", "b"], 1)  # uneven: one per row
    assert grid_module.repeated_rows(["a", "b"]) == (["a", "b"], 1)


def test_bootstrap_interval_covers_the_rate_and_narrows_with_more_prompts():
    from scoft_train.demo import bootstrap_interval

    few = torch.tensor([[1, 0, 1, 1]] * 5)
    many = torch.tensor([[1, 0, 1, 1]] * 80)
    low, high = bootstrap_interval(few)
    assert low <= 0.75 <= high and 0 < high - low
    wide, narrow = high - low, bootstrap_interval(many)[1] - bootstrap_interval(many)[0]
    assert narrow < wide
    assert bootstrap_interval(torch.ones(6, 4)) == (1.0, 1.0)
    paired = bootstrap_interval(torch.tensor([[1.0, 1.0, 0.0, 1.0]] * 40) - torch.zeros(40, 4))
    assert paired[0] > 0  # a change that excludes 0
