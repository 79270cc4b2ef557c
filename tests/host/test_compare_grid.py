"""The comparison grids on the real server: SCoFT Compare Grid (two image batches, seeds_per_prompt) and
SCoFT LoRA Compare Grid (baseline and LoRA strength columns sampled from the same seeds).

Cells of small models are enlarged by a whole factor with nearest neighbour: a grid cell, read back every
`zoom` pixels, is the sampled image itself, and a two-colour checker stays two colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from scoft_train import client
from scoft_train import grid as grid_module
from scoft_train.lora import add_lora, export_kohya
from scoft_train.models import load_default_model
from scoft_train.stages import GRID_CELL

INK, PAPER = (201, 31, 97), (17, 163, 59)
SIDE = 16  # checker side: enlarged x8 to GRID_CELL


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def cell(grid: np.ndarray, rows: int, per_row: int, columns: int, row: int, sample: int, column: int,
         side: int = GRID_CELL) -> np.ndarray:
    """One cell of a compare_grid picture (layout of scoft_train.grid: label column, then per sample a group of
    the columns, PAD between cells)."""
    pad, label_w = grid_module.PAD, max(grid_module.MIN_LABEL_WIDTH, side)
    gap = 0 if per_row == 1 else 3 * pad
    group_w = columns * (side + pad) + gap
    header_h = grid.shape[0] - pad - rows * (side + pad)
    x = label_w + pad + sample * group_w + column * (side + pad)
    y = header_h + row * (side + pad)
    return grid[y:y + side, x:x + side]


@pytest.fixture(scope="module")
def checker(comfy_host) -> str:
    """A two-colour 16 px checker in the host's input folder (for LoadImage)."""
    board = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    board[:] = PAPER
    board[(np.indices((SIDE, SIDE)).sum(axis=0) % 2) == 0] = INK
    Image.fromarray(board).save(comfy_host.root / "input" / "grid_checker.png")
    return "grid_checker.png"


def checker_grid(checker: str, copies: int, prompts: str, seeds_per_prompt: int) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": checker}},
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": copies}},
        "3": {"class_type": "SCoFTCompareGrid", "inputs": {
            "left_images": ["2", 0], "right_images": ["2", 0], "left_label": "baseline", "right_label": "SCoFT",
            "prompts": prompts, "seeds_per_prompt": seeds_per_prompt}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "grid_test/checker"}},
    }


def test_compare_grid_lays_out_seeds_per_prompt_with_sharp_cells(comfy_host, checker, tmp_path):
    (path,) = client.run_workflow(checker_grid(checker, 6, "a checker\na board", 3), comfy_host.url, tmp_path,
                                  timeout=120)
    grid = pixels(path)
    for row in range(2):
        for sample in range(3):
            for column in range(2):
                block = cell(grid, 2, 3, 2, row, sample, column).reshape(-1, 3)
                counts = [(block == colour).all(axis=1).sum() for colour in (INK, PAPER)]
                assert counts == [GRID_CELL * GRID_CELL // 2] * 2, (row, sample, column, counts)


def test_compare_grid_says_which_batch_does_not_fit(comfy_host, checker, tmp_path):
    with pytest.raises(client.ExecutionFailed) as failure:
        client.run_workflow(checker_grid(checker, 4, "a checker\na board", 3), comfy_host.url, tmp_path, timeout=120)
    message = str(failure.value)
    assert "left_images holds 4 images, but 2 prompt rows x 3 samples per prompt = 6" in message, message
    assert "set seeds_per_prompt 0" in message, message
    # Old behaviour kept: 0 = a prompt repeated on consecutive lines is one row of that many samples.
    (path,) = client.run_workflow(checker_grid(checker, 4, "a\na\nb\nb", 0), comfy_host.url, tmp_path, timeout=120)
    assert pixels(path).shape[1] > 2 * 2 * GRID_CELL  # two samples of two columns side by side


@pytest.fixture(scope="module")
def default_lora(comfy_host) -> str:
    """A LoRA with non-zero weights for the embedded default model, in the host's models/loras."""
    unet = load_default_model().unet
    add_lora(unet, rank=4, alpha=4.0)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in (p for p in unet.parameters() if p.requires_grad):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    export_kohya(unet, comfy_host.root / "models" / "loras" / "grid_test" / "default.safetensors", {"method": "test"})
    return "grid_test/default.safetensors"


def lora_grid_prompt(lora: str, strengths: str) -> dict:
    """Model + LoRA -> LoRA Compare Grid (2 prompts x 2 seeds), plus SCoFT Samplers of the same images."""
    sampling = {"negative_prompt": "", "seed": 11, "steps": 3, "cfg": 5.0, "scheduler": "ddim", "width": 0,
                "height": 0}
    rows = "a house in Tisharu\na house in Tisharu\na meal in Ombresk\na meal in Ombresk"
    return {
        "1": {"class_type": "SCoFTLoadModel", "inputs": {"model": "default", "config": "auto",
                                                         "prediction_type": "auto", "dtype": "float32",
                                                         "device": "cpu"}},
        "2": {"class_type": "SCoFTLoadLoRA", "inputs": {"lora_name": lora}},
        "3": {"class_type": "SCoFTLoRACompareGrid", "inputs": {
            "model": ["1", 0], "lora": ["2", 0], "prompts": "a house in Tisharu\na meal in Ombresk",
            "seeds_per_prompt": 2, "lora_strengths": strengths, **sampling}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "grid_test/lora_grid"}},
        "5": {"class_type": "SCoFTSampler", "inputs": {"model": ["1", 0], "prompts": rows, **sampling}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "grid_test/base"}},
        "7": {"class_type": "SCoFTSampler", "inputs": {"model": ["1", 0], "prompts": rows, "lora": ["2", 0],
                                                       "lora_strength": 1.0, **sampling}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "grid_test/full"}},
    }


def test_lora_compare_grid_samples_strength_columns_from_the_same_seeds(comfy_host, default_lora, tmp_path):
    paths = client.run_workflow(lora_grid_prompt(default_lora, "0, 0.5, 1"), comfy_host.url, tmp_path, timeout=300)
    (grid_path,) = [p for p in paths if p.name.startswith("lora_grid")]
    grid = pixels(grid_path)
    base = [pixels(p) for p in sorted(p for p in paths if p.name.startswith("base"))]
    full = [pixels(p) for p in sorted(p for p in paths if p.name.startswith("full"))]
    side = base[0].shape[0]
    zoom = GRID_CELL // side
    assert len(base) == len(full) == 4 and zoom * side == GRID_CELL
    for row in range(2):
        for sample in range(2):
            cells = [cell(grid, 2, 2, 3, row, sample, column) for column in range(3)]
            # Nearest neighbour: every zoom x zoom block is one pixel of the sample (up to the 1/255 that
            # SaveImage's truncation of the sampler's unrounded floats can take off).
            for image in cells:
                assert (image == np.repeat(np.repeat(image[::zoom, ::zoom], zoom, 0), zoom, 1)).all()
            seed_index = row * 2 + sample  # image i of the prompt-major rows starts from seed + i
            np.testing.assert_allclose(cells[0][::zoom, ::zoom], base[seed_index], atol=1)  # strength 0
            np.testing.assert_allclose(cells[2][::zoom, ::zoom], full[seed_index], atol=1)  # strength 1
            assert np.abs(cells[1] - cells[0]).mean() > 2 and np.abs(cells[1] - cells[2]).mean() > 2  # 0.5


@pytest.mark.parametrize("strengths, complaint", [
    ("0, half, 1", "'half' is not a number"),
    ("0", "no strength other than 0"),
    ("0.5, 1, 0.5", "0.5 is listed twice"),
    ("0, 12", "12 is outside -10..10"),
])
def test_lora_compare_grid_refuses_a_wrong_strength_list_when_queued(comfy_host, default_lora, tmp_path,
                                                                      strengths, complaint):
    prompt = {k: v for k, v in lora_grid_prompt(default_lora, strengths).items() if k in ("1", "2", "3", "4")}
    with pytest.raises(client.PromptRejected) as failure:
        client.run_workflow(prompt, comfy_host.url, tmp_path, timeout=60)
    message = str(failure.value)
    assert "node 3 (SCoFTLoRACompareGrid" in message and complaint in message, message
    assert "e.g. '0, 0.5, 1'" in message or "list each strength once" in message, message
