"""SCoFT Sampler, Compare Grid and LoRA Compare Grid: scoft_train.sampling / grid / stages.compare <->
ComfyUI IMAGE batches."""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

from PIL import Image

from ..scoft_train.grid import compare_grid, repeated_rows
from ..scoft_train.images import pil_to_batch, to_pil
from ..scoft_train.sampling import SCHEDULERS, sample_tensor
from ..scoft_train.stages import GRID_CELL, compare
from .common import SCOFT_LORA, SCOFT_MODEL, SEED_MAX, LoraFile, progress_callback, prompt_lines, tip

logger = logging.getLogger(__name__)

STRENGTH_RANGE = {"min": -10.0, "max": 10.0}  # a LoRA's strength, as in SCoFT Sampler
SAMPLES_MAX = 64
BASELINE = "baseline"

# One options dict for both nodes, so one Primitive node can drive the prompts of samplers and grid.
PROMPTS_INPUT = ("STRING", tip(
    "One prompt per line (blank lines are skipped). SCoFT Sampler makes one image per prompt; "
    "Compare Grid labels one row per prompt (a prompt on several consecutive lines: one row, one sample per line).",
    multiline=True, default="a photo of a house in Korea",
))


def image_size(width: int, height: int) -> tuple[int, int] | None:
    """The sampling size of the width and height widgets; None = the model's native size (both 0)."""
    if (width == 0) != (height == 0):
        raise ValueError(f"width {width} and height {height}: set both, or both to 0 for the model's native size")
    return (width, height) if width else None


class SCoFTSampler:
    DESCRIPTION = (
        "Text-to-image with the base model, optionally with a LoRA. Image i starts from noise of seed + i, "
        "so two samplers with the same seed and prompts (baseline and SCoFT) are directly comparable."
    )
    CATEGORY = "SCoFT/sample"
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("One image per prompt, [B, H, W, 3] in 0..1.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (SCOFT_MODEL, tip("Base model from Load SCoFT Model; never changed (a LoRA goes into a copy).")),
                "prompts": PROMPTS_INPUT,
                "negative_prompt": ("STRING", tip("Negative prompt for every image; empty = unconditional.", default="")),
                "seed": ("INT", tip(
                    f"Noise seed of the first image; image i uses seed + i (0..{SEED_MAX}).",
                    default=0, min=0, max=SEED_MAX,
                )),
                "steps": ("INT", tip("Denoising steps (1..1000).", default=20, min=1, max=1000)),
                "cfg": ("FLOAT", tip("Classifier-free guidance scale (0..30; 1 = no guidance).", default=7.5, min=0.0, max=30.0, step=0.1)),
                "scheduler": (tuple(SCHEDULERS), tip("Sampling scheduler, built from the model's noise schedule.")),
                "width": ("INT", tip(
                    "Image width in pixels, a multiple of 8 (of the VAE factor); 0 = the model's native size.",
                    default=0, min=0, max=4096, step=8,
                )),
                "height": ("INT", tip(
                    "Image height in pixels, a multiple of 8 (of the VAE factor); 0 = the model's native size.",
                    default=0, min=0, max=4096, step=8,
                )),
            },
            "optional": {
                "lora": (SCOFT_LORA, tip("LoRA to apply (from SCoFT Train or Load SCoFT LoRA); unconnected = baseline.")),
                "lora_strength": ("FLOAT", tip(
                    "LoRA scale: 0 = off, 1 = as trained (-10..10).", default=1.0, step=0.05, **STRENGTH_RANGE,
                )),
            },
        }

    def sample(self, model, prompts: str, negative_prompt: str, seed: int, steps: int, cfg: float, scheduler: str,
               width: int, height: int, lora: LoraFile | None = None, lora_strength: float = 1.0):
        lines = prompt_lines(prompts)
        if not lines:
            raise ValueError("prompts is empty: write at least one prompt, one per line")
        images = sample_tensor(
            model, lines, seed,
            lora_path=lora.path if lora is not None else None,
            lora_strength=lora_strength,
            scheduler=scheduler, steps=steps, cfg=cfg,
            size=image_size(width, height),
            negative_prompt=negative_prompt,
            on_step=progress_callback(steps),  # the engine reports the true total (steps x batches)
        )
        return (images,)


def seeds_input(auto: bool) -> tuple:
    """The seeds_per_prompt widget; `auto`: 0 means 'from prompts repeated on consecutive lines'."""
    if auto:
        return ("INT", tip(
            "Samples per prompt: each prompt line is one row with this many images per column, taken in order from "
            "the batches (a prompt's samples one after another). 0 = from the prompts: a prompt written on k "
            f"consecutive lines is one row of k samples. (integer 0..{SAMPLES_MAX})",
            default=0, min=0, max=SAMPLES_MAX,
        ))
    return ("INT", tip(
        "Samples per prompt, side by side in its row: sample j of prompt p starts from the noise of seed + p x "
        f"seeds_per_prompt + j, the same in every column. (integer 1..{SAMPLES_MAX})",
        default=3, min=1, max=SAMPLES_MAX,
    ))


class SCoFTCompareGrid:
    DESCRIPTION = (
        "Lays two image batches side by side (e.g. baseline | SCoFT from the same seeds), one labelled row per prompt, "
        f"seeds_per_prompt samples per row. Small images are enlarged without blur (nearest neighbour) to at least "
        f"{GRID_CELL} px. For columns of one LoRA at several strengths use SCoFT LoRA Compare Grid."
    )
    CATEGORY = "SCoFT/sample"
    FUNCTION = "grid"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("grid",)
    OUTPUT_TOOLTIPS = ("One RGB grid image: column headers on top, the prompt at the left of each row.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "left_images": ("IMAGE", tip("Left column, one image per prompt (e.g. the baseline).")),
                "right_images": ("IMAGE", tip("Right column, one image per prompt (e.g. with the SCoFT LoRA).")),
                "left_label": ("STRING", tip("Header of the left column.", default=BASELINE)),
                "right_label": ("STRING", tip("Header of the right column.", default="SCoFT")),
                "prompts": PROMPTS_INPUT,
            },
            "optional": {
                "seeds_per_prompt": seeds_input(auto=True),
            },
        }

    def grid(self, left_images, right_images, left_label: str, right_label: str, prompts: str,
             seeds_per_prompt: int = 0):
        if left_label == right_label:
            raise ValueError(f"left_label and right_label are both {left_label!r}; give the columns different names")
        lines = prompt_lines(prompts)
        if not lines:
            raise ValueError("prompts is empty: write the prompts of the images, one per line")
        rows, per_row = repeated_rows(lines) if seeds_per_prompt == 0 else (lines, seeds_per_prompt)
        want = len(rows) * per_row
        for name, images in (("left_images", left_images), ("right_images", right_images)):
            if len(images) != want:
                raise ValueError(
                    f"{name} holds {len(images)} images, but {len(rows)} prompt rows x {per_row} samples per prompt "
                    f"= {want}: "
                    + ("write each prompt once per sample in the samplers' prompts (e.g. 3 lines for 3 seeds), or set "
                       "seeds_per_prompt 0 to take the rows from the prompts as written"
                       if seeds_per_prompt else "give the samplers the same prompts as this grid")
                )
        grid = compare_grid({left_label: to_pil(left_images), right_label: to_pil(right_images)}, rows,
                            per_row=per_row, min_cell=GRID_CELL)
        return (pil_to_batch(grid),)


def parse_strengths(text: str) -> list[float]:
    """'0, 0.5, 1' -> [0.5, 1.0]: the LoRA strengths of the columns after the baseline (0 = the baseline,
    always first); a ValueError says what to write instead."""
    hint = "write LoRA strengths separated by commas, e.g. '0, 0.5, 1' (0 = the baseline column)"
    strengths = []
    for item in (part for part in re.split(r"[,\s]+", text.strip()) if part):
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"lora_strengths {text!r}: {item!r} is not a number; {hint}") from None
        if not STRENGTH_RANGE["min"] <= value <= STRENGTH_RANGE["max"]:
            raise ValueError(f"lora_strengths {text!r}: {value:g} is outside {STRENGTH_RANGE['min']:g}.."
                             f"{STRENGTH_RANGE['max']:g}; {hint}")
        if value in strengths:
            raise ValueError(f"lora_strengths {text!r}: {value:g} is listed twice; list each strength once")
        strengths.append(value)
    columns = [value for value in strengths if value != 0]
    if not columns:
        raise ValueError(f"lora_strengths {text!r}: no strength other than 0, so no LoRA column; {hint}")
    return columns


class SCoFTLoRACompareGrid:
    DESCRIPTION = (
        "Samples the prompts without the LoRA (baseline) and with it at each of lora_strengths, seeds_per_prompt "
        "samples per prompt from the same seeds in every column, and lays them out as one labelled grid: a row per "
        "prompt, the columns of each sample side by side. Small images are enlarged without blur (nearest "
        f"neighbour) to at least {GRID_CELL} px."
    )
    CATEGORY = "SCoFT/sample"
    FUNCTION = "grid"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("grid",)
    OUTPUT_TOOLTIPS = ("One RGB grid image: 'sample j' and column headers on top, the prompt at the left of each row.",)

    @classmethod
    def INPUT_TYPES(cls):
        sampler = SCoFTSampler.INPUT_TYPES()["required"]
        return {
            "required": {
                "model": sampler["model"],
                "lora": (SCOFT_LORA, tip("LoRA to compare (from SCoFT Train, SFSL Train or Load SCoFT LoRA).")),
                "prompts": PROMPTS_INPUT,
                "seeds_per_prompt": seeds_input(auto=False),
                "lora_strengths": ("STRING", tip(
                    "LoRA strengths of the columns, separated by commas: 0 = the baseline (always the first column), "
                    f"1 = as trained; each {STRENGTH_RANGE['min']:g}..{STRENGTH_RANGE['max']:g}, listed once, at "
                    "least one other than 0. E.g. '0, 0.5, 1'.",
                    default="0, 0.5, 1",
                )),
                **{name: sampler[name] for name in ("negative_prompt", "seed", "steps", "cfg", "scheduler", "width",
                                                    "height")},
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, lora_strengths):
        try:
            parse_strengths(lora_strengths)
        except ValueError as error:
            return str(error)
        return True

    def grid(self, model, lora: LoraFile, prompts: str, seeds_per_prompt: int, lora_strengths: str,
             negative_prompt: str, seed: int, steps: int, cfg: float, scheduler: str, width: int, height: int):
        lines = prompt_lines(prompts)
        if not lines:
            raise ValueError("prompts is empty: write at least one prompt, one per line")
        *middle, last = parse_strengths(lora_strengths)
        with tempfile.TemporaryDirectory() as scratch:
            path = compare(
                model, lora.path, lines, Path(scratch) / "grid.png", seed=seed, lora_strength=last,
                labels=(BASELINE, f"LoRA {last:g}"), on_step=progress_callback(steps),
                seeds_per_prompt=seeds_per_prompt, extra_strengths=tuple(middle),
                scheduler=scheduler, steps=steps, cfg=cfg, size=image_size(width, height),
                negative_prompt=negative_prompt,
            )
            with Image.open(path) as grid:
                return (pil_to_batch(grid),)
