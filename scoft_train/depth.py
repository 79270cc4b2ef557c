"""Depth maps for ControlNet-depth: controlnet_aux estimators from a local folder, or given maps.

`load_depth_estimator(name, annotator_dir)` builds a controlnet_aux detector through its
own `from_pretrained(<dir>)`, after checking, for every weight file it will read, that the
file is there (else the error names the file, the folder searched and where to get it)
and that `torch.load(weights_only=True)` accepts it (else it is refused: nothing is ever
unpickled). Offline by construction: a folder is always passed (never a hub id), and the
supported detectors build their timm/torch.hub backbones with pretrained=False (MiDaS
midas_v21/_small fetch backbones from torch.hub, so they are not offered).

Depth maps are RGB PIL images, grey (R = G = B), near = bright, as ControlNet-depth expects.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from .imagefile import scale_to_uint8

logger = logging.getLogger(__name__)

ANNOTATORS_URL = "https://huggingface.co/lllyasviel/Annotators"
DepthEstimator = Callable[[Image.Image], Image.Image]


@dataclass(frozen=True)
class DepthModel:
    """A controlnet_aux depth detector: class, weight files it reads, from_pretrained options."""

    detector: str
    files: tuple[str, ...]
    options: dict = field(default_factory=dict)
    bare_argv: bool = False  # LeReS parses sys.argv with argparse while loading


DEPTH_MODELS: dict[str, DepthModel] = {
    "midas": DepthModel("MidasDetector", ("dpt_hybrid-midas-501f0c75.pt",), {"model_type": "dpt_hybrid"}),
    "midas_large": DepthModel(
        "MidasDetector", ("dpt_large-midas-2f21e586.pt",),
        {"model_type": "dpt_large", "filename": "dpt_large-midas-2f21e586.pt"},
    ),
    "zoe": DepthModel("ZoeDetector", ("ZoeD_M12_N.pt",), {"model_type": "zoedepth"}),
    "zoe_nk": DepthModel(
        "ZoeDetector", ("ZoeD_M12_NK.pt",), {"model_type": "zoedepth_nk", "filename": "ZoeD_M12_NK.pt"}
    ),
    "leres": DepthModel("LeresDetector", ("res101.pth", "latest_net_G.pth"), bare_argv=True),
}


def check_weight_file(path: Path) -> None:
    """Refuse a weight file that torch.load(weights_only=True) cannot read (nothing unpickled)."""
    try:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise ValueError(
            f"{path} cannot be read as plain tensors (torch.load weights_only=True: "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}); it is refused rather than "
            f"unpickled. Get the original file from {ANNOTATORS_URL}"
        ) from error


@contextlib.contextmanager
def _bare_argv() -> Iterator[None]:
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def load_depth_estimator(
    name: str,
    annotator_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    detect_resolution: int = 512,
) -> DepthEstimator:
    """A depth estimator image -> depth map (same size as the input) from local weights.

    `name`: a key of DEPTH_MODELS. `annotator_dir`: the folder holding its files (e.g.
    ComfyUI's `custom_nodes/comfyui_controlnet_aux/ckpts/lllyasviel/Annotators`).
    `detect_resolution`: the side the detector runs at (controlnet_aux rounds to 64).
    """
    if name not in DEPTH_MODELS:
        raise ValueError(f"depth estimator {name!r} is unknown; choose one of {sorted(DEPTH_MODELS)}")
    spec = DEPTH_MODELS[name]
    folder = Path(annotator_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"annotator folder {folder} does not exist; create it and put {', '.join(spec.files)} there "
            f"(from {ANNOTATORS_URL})"
        )
    for file in spec.files:
        if not (folder / file).is_file():
            raise FileNotFoundError(
                f"depth estimator {name!r} needs {file}, not found in {folder}; download it from "
                f"{ANNOTATORS_URL} and put it in that folder"
            )
        check_weight_file(folder / file)
    detector_class = getattr(importlib.import_module("controlnet_aux"), spec.detector)
    with _bare_argv() if spec.bare_argv else contextlib.nullcontext():
        detector = detector_class.from_pretrained(str(folder), **spec.options)
    detector.to(device)
    logger.info("loaded depth estimator %s (%s) from %s", name, spec.detector, folder)

    def estimate(image: Image.Image) -> Image.Image:
        depth = detector(
            image.convert("RGB"), detect_resolution=detect_resolution, image_resolution=detect_resolution,
            output_type="pil",
        )
        return depth_image(depth, image.size)

    return estimate


def depth_image(depth: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Any depth picture (L, I;16, RGB ...) -> grey RGB of `size` (W, H), values 0..255; a
    16-bit map is stretched from its own min..max (depth is relative)."""
    if depth.mode not in ("L", "RGB"):
        array = np.asarray(depth, dtype=np.float32)
        depth = Image.fromarray(scale_to_uint8(array, array.min(), array.max()))
    return depth.convert("L").resize(size, Image.BILINEAR).convert("RGB")
