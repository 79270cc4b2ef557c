"""Load CCUB Dataset: a folder -> scoft_train.data.load_ccub -> SCOFT_DATASET + preview + summary."""

from __future__ import annotations

import logging
from pathlib import Path

from ..scoft_train.data import DEFAULT_CULTURE_TERMS, load_ccub
from ..scoft_train.images import dataset_preview
from ..scoft_train.biaslab import BIASLAB_CCUB_DIR
from ..scoft_train.sample_data import working_copy
from .common import CCUB_KIND, SCOFT_DATASET, SAMPLE, check_folder, dataset_choices, input_folder, tip

logger = logging.getLogger(__name__)

SAMPLE_COPY = "scoft_biaslab_ccub"
PREVIEW_LIMIT = 16


def resolve_folder(folder: str) -> Path:
    """'' or 'sample' = a working copy of the bias-lab CCUB folder shipped with the engine (made once
    in ComfyUI's input dir, so negatives are never written into the package); otherwise a folder in a
    `ccub` root or ComfyUI's input dir, resolved (symlinks followed) and refused if it lies outside."""
    return input_folder(folder, lambda base: working_copy(BIASLAB_CCUB_DIR, base / SAMPLE_COPY), "folder")


class LoadCCUBDataset:
    DESCRIPTION = (
        "Loads and validates a CCUB-style folder (metadata.jsonl with text / blip_text / negative_imgpath, "
        "or images with .txt captions and negatives/). Every problem is listed with its file and line "
        "before any training starts."
    )
    CATEGORY = "SCoFT/data"
    FUNCTION = "load"
    RETURN_TYPES = (SCOFT_DATASET, "IMAGE", "STRING")
    RETURN_NAMES = ("dataset", "preview", "summary")
    OUTPUT_TOOLTIPS = (
        "The validated dataset (captions, generic captions, negatives) for SCoFT Train.",
        f"The first {PREVIEW_LIMIT} images as the trainer sees them (center crop at the chosen resolution).",
        "Counts of images, captions, derived generic captions and negatives, and the dataset fingerprint.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "folder": (dataset_choices(), tip(
                    f"Dataset folder, from the '{CCUB_KIND}' folders (ComfyUI/input/{CCUB_KIND}/ and any "
                    f"'{CCUB_KIND}:' root in extra_model_paths.yaml); negatives are written into it. "
                    f"'{SAMPLE}' = the bias-lab CCUB folder shipped with the engine, 100 images of five invented "
                    f"cultures with depth maps (copied once to input/{SAMPLE_COPY}). Folders outside those roots "
                    "are refused unless ComfyUI runs with SCOFT_ALLOW_ANY_PATH=1.",
                    default=SAMPLE,
                )),
                "culture_terms": ("STRING", tip(
                    "Comma-separated words removed from captions to derive the generic caption when an entry "
                    "has no blip_text (e.g. 'Korean, Korea, in Korea'). Empty = the engine's built-in list "
                    f"of {len(DEFAULT_CULTURE_TERMS)} nationality and place terms.",
                    default="",
                )),
                "resolution": ("INT", tip(
                    "Training image side in pixels (shorter side resized, then center-cropped square); "
                    "8..2048, usually the model's native size (32 for 'default', 512 for SD 1.5).",
                    default=64, min=8, max=2048, step=8,
                )),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, folder):
        # Declaring `folder` here also lets older workflows' values (a folder relative to input/) pass the
        # list check; this check confines them instead.
        return check_folder(folder, "folder")

    def load(self, folder: str, culture_terms: str, resolution: int):
        root = resolve_folder(folder)
        terms = tuple(term.strip() for term in culture_terms.split(",") if term.strip()) or DEFAULT_CULTURE_TERMS
        dataset = load_ccub(root, culture_terms=terms, resolution=resolution)
        counts = dataset.summary()
        summary = (
            f"CCUB dataset {root}\n"
            f"images: {counts['images']}\ncaptions: {counts['captions']}\n"
            f"generic captions derived: {counts['generic_captions_derived']}\n"
            f"negatives: {counts['negatives']}\nresolution: {resolution}\nfingerprint: {counts['fingerprint']}"
            + "".join(f"\nnote: {note}" for note in dataset.notes)
        )
        logger.info("%s", summary.replace("\n", "; "))
        return (dataset, dataset_preview(dataset, PREVIEW_LIMIT), summary)
