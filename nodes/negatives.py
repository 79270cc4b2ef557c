"""Generate SCoFT Negatives: model + depth ControlNet + dataset -> negatives written into the
CCUB folder (scoft_train.negatives.generate_negatives) -> the dataset with its new negatives + a preview."""

from __future__ import annotations

import logging
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from PIL import Image

from ..scoft_train.controlnet import DEFAULT_CONTROLNET, default_controlnet, load_controlnet
from ..scoft_train.depth import DEPTH_MODELS, load_depth_estimator
from ..scoft_train.images import pil_to_batch
from ..scoft_train.negatives import (
    NegativeSettings,
    depth_from_dataset,
    depth_from_estimator,
    depth_from_images,
    generate_negatives,
)
from ..scoft_train.sampling import SCHEDULERS, to_pil
from .common import (
    ANNOTATORS_KIND, SCOFT_DATASET, SCOFT_MODEL, SEED_MAX, check_model_path, folder_roots, model_path,
    progress_callback, tip, weight_folder_choices,
)

logger = logging.getLogger(__name__)

DATASET_DEPTH = "dataset"
IMAGE_DEPTH = "depth_images input"
DEPTH_SOURCES = (DATASET_DEPTH, IMAGE_DEPTH, *DEPTH_MODELS)
ANNOTATORS_FOLDER = "annotators"
CACHE_SIZE = 2

# {(choice, dtype, device, model fingerprint): ControlNet}, most recently used last.
_CACHE: OrderedDict[tuple, object] = OrderedDict()


def controlnet_choices() -> list[str]:
    import folder_paths

    return [DEFAULT_CONTROLNET, *folder_paths.get_filename_list("controlnet")]


def cached_controlnet(choice: str, bundle):
    """The ControlNet for a combo entry, loaded once (outside inference mode) and cached."""
    import folder_paths

    key = (choice, str(bundle.dtype), str(bundle.device), bundle.fingerprint)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    with torch.inference_mode(False):
        if choice == DEFAULT_CONTROLNET:
            controlnet = default_controlnet(bundle)
        else:
            path = folder_paths.get_full_path("controlnet", choice)
            if path is None:
                raise FileNotFoundError(
                    f"ControlNet {choice!r} not found in {folder_paths.get_folder_paths('controlnet')}"
                )
            controlnet = load_controlnet(path, dtype=bundle.dtype, device=bundle.device)
    _CACHE[key] = controlnet
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return controlnet


def annotator_dir(text: str, source: str | None = None) -> Path:
    """'annotators' (or empty) = the first `annotators` root holding the files of depth estimator `source`
    (else the first root); otherwise a folder in those roots, confined to them (symlinks followed)."""
    text = (text or "").strip()
    if text in ("", ANNOTATORS_FOLDER):
        roots = folder_roots(ANNOTATORS_KIND)
        files = DEPTH_MODELS[source].files if source in DEPTH_MODELS else ()
        return next((root for root in roots if files and all((root / f).is_file() for f in files)), roots[0])
    return model_path("annotator_dir", text, ANNOTATORS_KIND)


def depth_provider(source: str, dataset, annotators: str, depth_images, device):
    if source == DATASET_DEPTH:
        return depth_from_dataset()
    if source == IMAGE_DEPTH:
        if depth_images is None:
            raise ValueError(f"depth_source '{IMAGE_DEPTH}' needs the depth_images input connected")
        return depth_from_images(to_pil(depth_images.cpu()), len(dataset))
    return depth_from_estimator(load_depth_estimator(source, annotator_dir(annotators, source), device),
                                dataset.background)


class GenerateSCoFTNegatives:
    DESCRIPTION = (
        "Makes the negatives the way the SCoFT paper does: a depth map of every CCUB image steers the "
        "PRETRAINED model (never a LoRA) through a depth ControlNet, prompted with the image's caption, so the "
        "negatives keep the layout but show the model's own biases. Writes negatives/<stem>_neg<k>.png into the "
        "dataset folder and lists them in metadata.jsonl (atomically, with a .bak); a re-run only fills gaps."
    )
    CATEGORY = "SCoFT/data"
    FUNCTION = "generate"
    RETURN_TYPES = (SCOFT_DATASET, "IMAGE")
    RETURN_NAMES = ("dataset", "preview")
    OUTPUT_TOOLTIPS = (
        "The dataset with its new negatives listed, for SCoFT Train.",
        "Rows of original | depth | negatives for the images generated in this run (blank if none were missing).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (SCOFT_MODEL, tip("The pretrained base model from Load SCoFT Model (used as is, no LoRA).")),
                "controlnet": (controlnet_choices(), tip(
                    f"Depth ControlNet from ComfyUI's controlnet folder (e.g. control_v11f1p_sd15_depth); "
                    f"'{DEFAULT_CONTROLNET}' = the one that goes with the embedded default model.",
                )),
                "dataset": (SCOFT_DATASET, tip("CCUB dataset from Load CCUB Dataset; its folder receives the negatives.")),
                "depth_source": (DEPTH_SOURCES, tip(
                    f"'{DATASET_DEPTH}': depth maps shipped with the dataset (metadata 'depth' field or "
                    f"<stem>_depth.png); '{IMAGE_DEPTH}': the depth_images batch, one per dataset image in order; "
                    "otherwise a controlnet_aux estimator whose weights are in annotator_dir.",
                    default=DATASET_DEPTH,
                )),
                "annotator_dir": ([ANNOTATORS_FOLDER, *weight_folder_choices(ANNOTATORS_KIND)], tip(
                    "Folder with the depth estimator's weight files (e.g. dpt_hybrid-midas-501f0c75.pt), from the "
                    f"'{ANNOTATORS_KIND}' folders (models/{ANNOTATORS_KIND} and any '{ANNOTATORS_KIND}:' root in "
                    f"extra_model_paths.yaml). '{ANNOTATORS_FOLDER}' = the first of those roots holding the chosen "
                    "estimator's files; the others are sub-folders holding weight files. Folders outside those roots "
                    "are refused unless ComfyUI runs with SCOFT_ALLOW_ANY_PATH=1. Nothing is downloaded.",
                    default=ANNOTATORS_FOLDER,
                )),
                "k": ("INT", tip("Negatives per image (1..16).", default=2, min=1, max=16)),
                "seed": ("INT", tip(
                    "Base seed; each negative's seed derives from (seed, image path, k), so re-runs reproduce it.",
                    default=0, min=0, max=SEED_MAX,
                )),
                "steps": ("INT", tip("Denoising steps (1..200).", default=20, min=1, max=200)),
                "cfg": ("FLOAT", tip("Classifier-free guidance scale (0..30).", default=7.5, min=0.0, max=30.0, step=0.1)),
                "conditioning_scale": ("FLOAT", tip(
                    "ControlNet strength (0..2); 1 = as trained.", default=1.0, min=0.0, max=2.0, step=0.05,
                )),
                "control_end": ("FLOAT", tip(
                    "Fraction of the steps during which the depth map steers (0..1).",
                    default=1.0, min=0.0, max=1.0, step=0.05,
                )),
                "batch_size": ("INT", tip("Images per pipeline call (1..64).", default=4, min=1, max=64)),
                "scheduler": (tuple(SCHEDULERS), tip("diffusers sampler.", default="ddim")),
            },
            "optional": {
                "depth_images": ("IMAGE", tip(f"Depth maps from any depth node, used when depth_source is '{IMAGE_DEPTH}'.")),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, annotator_dir):
        # Listed here so this input is confined by this check (not only by the list).
        return check_model_path("annotator_dir", annotator_dir, ANNOTATORS_KIND, ("", ANNOTATORS_FOLDER))

    def generate(self, model, controlnet, dataset, depth_source, annotator_dir, k, seed, steps, cfg,
                 conditioning_scale, control_end, batch_size, scheduler, depth_images=None):
        settings = NegativeSettings(
            k=k, seed=seed, steps=steps, cfg=cfg, conditioning_scale=conditioning_scale, control_end=control_end,
            batch_size=batch_size, scheduler=scheduler, resolution=dataset.resolution,
        )
        depth = depth_provider(depth_source, dataset, annotator_dir, depth_images, model.device)
        total = k * len(dataset)
        with tempfile.TemporaryDirectory() as scratch:
            preview_path = Path(scratch) / "preview.png"
            result = generate_negatives(
                model, cached_controlnet(controlnet, model), dataset, depth, settings,
                on_step=progress_callback(total), preview=preview_path,
            )
            if result.preview is not None:
                with Image.open(result.preview) as grid:
                    preview = pil_to_batch(grid)
            else:
                preview = torch.ones(1, 64, 64, 3)
        logger.info("negatives: %d written, %d already there", len(result.generated), result.already_there)
        return (result.dataset, preview)
