"""Load SCoFT Model: ComfyUI model folders -> scoft_train.models.load_model -> SCOFT_MODEL."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

import torch

from ..scoft_train.models import BUNDLED_CONFIGS, DEFAULT_MODEL, PREDICTION_TYPES, ModelBundle, load_model
from .common import SCOFT_MODEL, tip, torch_device

logger = logging.getLogger(__name__)

DIFFUSERS_PREFIX = "diffusers/"
AUTO = "auto"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEVICES = (AUTO, "cpu", "cuda", "mps")
CACHE_SIZE = 2

# {(source, config, prediction_type, dtype, device): bundle}, most recently used last.
_CACHE: OrderedDict[tuple, ModelBundle] = OrderedDict()


def diffusers_folders() -> list[str]:
    """Folders holding a model_index.json under ComfyUI's `diffusers` model folders (relative paths)."""
    import folder_paths

    found = set()
    for base in folder_paths.get_folder_paths("diffusers"):
        for root, _dirs, files in os.walk(base, followlinks=True):
            if "model_index.json" in files:
                found.add(Path(os.path.relpath(root, base)).as_posix())
    return sorted(found)


def model_choices() -> list[str]:
    import folder_paths

    checkpoints = folder_paths.get_filename_list("checkpoints")
    return [DEFAULT_MODEL, *checkpoints, *(DIFFUSERS_PREFIX + name for name in diffusers_folders())]


def resolve_source(choice: str) -> str:
    """A combo entry -> what load_model takes: 'default', a checkpoint file or a diffusers folder."""
    import folder_paths

    if choice == DEFAULT_MODEL:
        return DEFAULT_MODEL
    if choice.startswith(DIFFUSERS_PREFIX):
        name = choice[len(DIFFUSERS_PREFIX):]
        for base in folder_paths.get_folder_paths("diffusers"):
            if (Path(base) / name / "model_index.json").is_file():
                return str(Path(base) / name)
    path = folder_paths.get_full_path("checkpoints", choice)
    if path is None:
        raise FileNotFoundError(
            f"model {choice!r}: no such checkpoint in {folder_paths.get_folder_paths('checkpoints')} and no "
            f"diffusers folder with model_index.json in {folder_paths.get_folder_paths('diffusers')}; "
            "put the file there and refresh, or pick 'default'"
        )
    return path


class LoadSCoFTModel:
    DESCRIPTION = (
        "Loads a Stable Diffusion 1.x/2.x model offline for SCoFT training and sampling: a single-file "
        "checkpoint from models/checkpoints (configs ship with the engine), a diffusers folder from "
        "models/diffusers, or 'default', the tiny embedded model. Loaded models are cached."
    )
    CATEGORY = "SCoFT/model"
    FUNCTION = "load"
    RETURN_TYPES = (SCOFT_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The frozen UNet, VAE, text encoder, tokenizer and noise schedule, shared read-only by training and sampling.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (model_choices(), tip(
                    "'default': the tiny embedded model (no download, for tests and demos). Other entries: "
                    "single-file checkpoints in models/checkpoints, and 'diffusers/<folder>' for diffusers "
                    "folders (with model_index.json) in models/diffusers."
                )),
                "config": ((AUTO, *BUNDLED_CONFIGS), tip(
                    "Model config of a single-file checkpoint: 'auto' detects SD 1.x vs 2.x from the "
                    "cross-attention width; 'sd15'/'sd21' force the bundled config. Ignored otherwise."
                )),
                "prediction_type": ((AUTO, *PREDICTION_TYPES), tip(
                    "What the UNet predicts: 'auto' keeps the model's scheduler setting; override e.g. "
                    "'epsilon' for a 512-px SD 2.x base model."
                )),
                "dtype": (tuple(DTYPES), tip(
                    "Weight precision: float32 (CPU-safe, default), float16/bfloat16 (GPU; half the memory)."
                )),
                "device": (DEVICES, tip(
                    "Where the weights live: 'auto' = ComfyUI's compute device (CPU when started with --cpu)."
                )),
            }
        }

    def load(self, model: str, config: str, prediction_type: str, dtype: str, device: str):
        source = resolve_source(model)
        key = (source, config, prediction_type, dtype, str(torch_device(device)))
        if key in _CACHE:
            _CACHE.move_to_end(key)
            logger.info("SCoFT model %s (%s, %s): reusing the cached copy", model, dtype, key[-1])
            return (_CACHE[key],)
        # ComfyUI runs nodes under inference mode; tensors made there can never join an
        # autograd graph, and training backpropagates through the frozen VAE and text encoder.
        with torch.inference_mode(False):
            bundle = load_model(
                source,
                dtype=DTYPES[dtype],
                device=key[-1],
                config=None if config == AUTO or not Path(source).is_file() else config,
                prediction_type=None if prediction_type == AUTO else prediction_type,
            )
        _CACHE[key] = bundle
        while len(_CACHE) > CACHE_SIZE:
            dropped, _ = _CACHE.popitem(last=False)
            logger.info("SCoFT model cache: dropped %s", dropped[0])
        logger.info("SCoFT model %s loaded (%s, %s, fingerprint %s)", model, dtype, key[-1], bundle.fingerprint)
        return (bundle,)
