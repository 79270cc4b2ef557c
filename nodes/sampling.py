"""SCoFT Sampler and Compare Grid: scoft_train.sampling / scoft_train.grid <-> ComfyUI IMAGE batches."""

from __future__ import annotations

import logging

from ..scoft_train.grid import compare_grid, repeated_rows
from ..scoft_train.images import pil_to_batch, to_pil
from ..scoft_train.sampling import SCHEDULERS, sample_tensor
from ..scoft_train.stages import GRID_CELL
from .common import SCOFT_LORA, SCOFT_MODEL, SEED_MAX, LoraFile, progress_callback, prompt_lines, tip

logger = logging.getLogger(__name__)

# One options dict for both nodes, so one Primitive node can drive the prompts of samplers and grid.
PROMPTS_INPUT = ("STRING", tip(
    "One prompt per line (blank lines are skipped). SCoFT Sampler makes one image per prompt; "
    "Compare Grid labels one row per prompt (a prompt on several consecutive lines: one row, one sample per line).",
    multiline=True, default="a photo of a house in Korea",
))


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
                    "LoRA scale: 0 = off, 1 = as trained (-10..10).", default=1.0, min=-10.0, max=10.0, step=0.05,
                )),
            },
        }

    def sample(self, model, prompts: str, negative_prompt: str, seed: int, steps: int, cfg: float, scheduler: str,
               width: int, height: int, lora: LoraFile | None = None, lora_strength: float = 1.0):
        lines = prompt_lines(prompts)
        if not lines:
            raise ValueError("prompts is empty: write at least one prompt, one per line")
        if (width == 0) != (height == 0):
            raise ValueError(f"width {width} and height {height}: set both, or both to 0 for the model's native size")
        images = sample_tensor(
            model, lines, seed,
            lora_path=lora.path if lora is not None else None,
            lora_strength=lora_strength,
            scheduler=scheduler, steps=steps, cfg=cfg,
            size=(width, height) if width else None,
            negative_prompt=negative_prompt,
            on_step=progress_callback(steps),  # the engine reports the true total (steps x batches)
        )
        return (images,)


class SCoFTCompareGrid:
    DESCRIPTION = (
        "Lays two image batches side by side (e.g. baseline | SCoFT from the same seeds), one labelled row per prompt. "
        f"Small images are enlarged without blur (nearest neighbour) to at least {GRID_CELL} px. A prompt written on "
        "several consecutive lines (the same number of times each) becomes one row with one sample per line, "
        "the two columns of each sample side by side."
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
                "left_label": ("STRING", tip("Header of the left column.", default="baseline")),
                "right_label": ("STRING", tip("Header of the right column.", default="SCoFT")),
                "prompts": PROMPTS_INPUT,
            }
        }

    def grid(self, left_images, right_images, left_label: str, right_label: str, prompts: str):
        if left_label == right_label:
            raise ValueError(f"left_label and right_label are both {left_label!r}; give the columns different names")
        rows, per_row = repeated_rows(prompt_lines(prompts))
        grid = compare_grid({left_label: to_pil(left_images), right_label: to_pil(right_images)}, rows,
                            per_row=per_row, min_cell=GRID_CELL)
        return (pil_to_batch(grid),)
