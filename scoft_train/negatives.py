"""Negatives: how the *pretrained* model pictures each CCUB caption, in the CCUB image's layout.

For every image of a CCUB folder: a depth map (an estimator, the dataset's own maps, or
maps handed in), then K images from the pretrained model + ControlNet-depth prompted with
the image's culturally specific caption, written to `negatives/<stem>_neg<k>.png`.

- Reproducible: negative k of an image starts from the noise of
  `negative_seed(seed, relative image path, k)`, drawn on the CPU per image, so batching
  and re-runs do not change it.
- Resumable: an existing `<stem>_neg<k>.png` counts as done; a re-run generates only what
  is missing and rewrites nothing when complete. Each image is written to a temp file
  and renamed; a run killed at any moment leaves only complete images.
- Layout A (metadata.jsonl): after each batch, `negative_imgpath` of the affected lines
  lists the new files (relative paths, appended after any existing entries); other
  fields and the line order are kept. The file is replaced atomically and the version
  from before the run is kept as `metadata.jsonl.bak` (`ccub_folder.MetadataFile`).
- Layout B (sidecar captions): no metadata.jsonl is written (it would switch the folder
  to layout A); `negatives/<stem>_neg<k>.png` is what that layout discovers.
- The folder is read once, by `data.load_ccub`: `generate_negatives` takes the loaded
  dataset and returns it with the new negatives listed, exactly as a re-read would.
- Generation size: short side `resolution`, aspect kept, but never more than
  `PIXEL_BUDGET` times the model's native pixel count (a 2000x20 panorama is not rendered
  at 100x the model's budget).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
from PIL import Image

from .atomic import atomic_save_image
from .ccub_folder import (
    DEPTH_SUFFIX,
    METADATA_NAME,
    NEGATIVES_DIR,
    CCUBRecord,
    DatasetError,
    MetadataFile,
    with_negatives,
)
from .data import CCUBDataset, load_ccub
from .depth import DepthEstimator, depth_image
from .grid import compare_grid, fit_cell, save_grid
from .imagefile import WHITE, Background, load_rgb, open_oriented
from .models import ModelBundle
from .progress import OnStep
from .sampling import SCHEDULERS, initial_noise, make_scheduler, to_pil

logger = logging.getLogger(__name__)

PREVIEW_ROWS = 8
PIXEL_BUDGET = 2.0  # generation area cap, in units of the model's native resolution squared


@dataclass(frozen=True)
class NegativeSettings:
    """Generation settings; `resolution` is the short side in px (None: the model's own)."""

    k: int = 2
    seed: int = 0
    steps: int = 20
    cfg: float = 7.5
    conditioning_scale: float = 1.0
    control_end: float = 1.0
    batch_size: int = 4
    scheduler: str = "ddim"
    resolution: int | None = None
    negative_prompt: str = ""

    def __post_init__(self):
        for name in ("k", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.control_end <= 1.0:
            raise ValueError(f"control_end is a fraction of the steps in (0, 1], got {self.control_end}")
        if self.conditioning_scale < 0:
            raise ValueError(f"conditioning_scale must be >= 0, got {self.conditioning_scale}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler {self.scheduler!r} is unknown; choose one of {sorted(SCHEDULERS)}")
        if self.resolution is not None and self.resolution < 8:
            raise ValueError(f"resolution must be at least 8 px, got {self.resolution}")


@dataclass(frozen=True)
class CCUBImage:
    """One image of the dataset, in dataset order. `line`: its 1-based metadata.jsonl line
    (None in layout B); `depth`: the metadata's `depth` path, absolute, if given."""

    index: int
    image: Path
    relpath: str
    text: str
    line: int | None = None
    depth: Path | None = None

    @property
    def stem(self) -> str:
        return Path(self.relpath).stem

    def negative_relpath(self, k: int) -> str:
        return f"{NEGATIVES_DIR}/{self.stem}_neg{k}.png"


DepthProvider = Callable[[CCUBImage], Image.Image]


@dataclass
class NegativesResult:
    """What a run did; `dataset`: the input dataset with every negative now on disk listed."""

    root: Path
    dataset: CCUBDataset
    generated: list[Path] = field(default_factory=list)
    already_there: int = 0
    metadata_written: bool = False
    preview: Path | None = None


def negative_seed(seed: int, relpath: str, k: int) -> int:
    """A 63-bit seed from (base seed, image path relative to the folder, k): stable across runs."""
    digest = hashlib.sha256(f"{seed}\0{relpath}\0{k}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def dataset_images(dataset: CCUBDataset) -> list[CCUBImage]:
    """The dataset's images in order. Raises DatasetError if two share a file stem (their
    negatives/<stem>_neg<k>.png would collide)."""
    items = [_image(index, record) for index, record in enumerate(dataset.records)]
    problems, seen = [], {}
    for item in items:
        if item.stem in seen:
            problems.append(f"{item.relpath}: same file stem as {seen[item.stem]}; negatives/{item.stem}_neg<k>.png "
                            "would collide, rename one of them")
        seen.setdefault(item.stem, item.relpath)
    if problems:
        raise DatasetError(dataset.root, problems)
    return items


def _image(index: int, record: CCUBRecord) -> CCUBImage:
    return CCUBImage(index, record.image, record.relpath, record.text, record.line, record.depth)


def list_images(folder: str | os.PathLike) -> list[CCUBImage]:
    """The images of a CCUB folder read and validated by `load_ccub`, in dataset order."""
    return dataset_images(load_ccub(folder))


def depth_from_estimator(estimator: DepthEstimator, background: Background = WHITE) -> DepthProvider:
    """Depth estimated from each CCUB image (see depth.load_depth_estimator)."""

    def provide(item: CCUBImage) -> Image.Image:
        return estimator(load_rgb(item.image, background))

    return provide


def depth_from_dataset() -> DepthProvider:
    """Depth maps shipped with the dataset: the metadata's `depth` path, else `<stem>_depth.png`
    beside the image."""

    def provide(item: CCUBImage) -> Image.Image:
        path = item.depth or item.image.with_name(f"{item.stem}{DEPTH_SUFFIX}.png")
        if not path.is_file():
            raise FileNotFoundError(
                f"no depth map for {item.relpath}: {path} does not exist. Put a depth PNG there (or a 'depth' "
                "field in metadata.jsonl), or estimate depth with --depth midas/zoe/... and --annotator-dir"
            )
        depth = open_oriented(path)
        return depth_image(depth, depth.size)

    return provide


def depth_from_images(images: Sequence[Image.Image], count: int) -> DepthProvider:
    """Depth maps given in dataset order (see `list_images`), e.g. a ComfyUI IMAGE batch."""
    if len(images) != count:
        raise ValueError(
            f"got {len(images)} depth images for {count} dataset images; pass one per image, in dataset order"
        )
    return lambda item: images[item.index]


def generation_size(image_size: tuple[int, int], resolution: int, factor: int) -> tuple[int, int]:
    """(W, H): short side `resolution`, aspect kept, both multiples of `factor`, and the area
    at most PIXEL_BUDGET * resolution**2 (extreme aspect ratios get a shorter short side)."""
    width, height = image_size
    budget = PIXEL_BUDGET * resolution**2
    scale = min(resolution / min(width, height), (budget / (width * height)) ** 0.5)
    sides = [max(factor, round(side * scale / factor) * factor) for side in (width, height)]
    long = 0 if sides[0] >= sides[1] else 1
    if sides[0] * sides[1] > budget:
        sides[long] = max(factor, int(budget / sides[1 - long]) // factor * factor)
    return sides[0], sides[1]


def controlnet_pipeline(
    bundle: ModelBundle, controlnet: ControlNetModel, scheduler: str = "ddim"
) -> StableDiffusionControlNetPipeline:
    """A ControlNet pipeline sharing the bundle's modules; refuses a UNet carrying LoRA adapters."""
    if getattr(bundle.unet, "peft_config", None):
        raise ValueError(
            "the model's UNet carries LoRA adapters; negatives must come from the pretrained model. "
            "Load the base model without a LoRA."
        )
    pipe = StableDiffusionControlNetPipeline(
        vae=bundle.vae, text_encoder=bundle.text_encoder, tokenizer=bundle.tokenizer, unet=bundle.unet,
        controlnet=controlnet, scheduler=make_scheduler(bundle, scheduler),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render(
    pipe: StableDiffusionControlNetPipeline,
    texts: list[str],
    depths: list[Image.Image],
    seeds: list[int],
    size: tuple[int, int],
    settings: NegativeSettings,
) -> list[Image.Image]:
    """One pipeline call: image i from texts[i], depths[i] (RGB, `size`) and noise of seeds[i]."""
    width, height = size
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    shape = (pipe.unet.config.in_channels, height // factor, width // factor)
    noise, generators = zip(*(initial_noise(seed, shape) for seed in seeds), strict=True)
    result = pipe(
        prompt=texts,
        negative_prompt=[settings.negative_prompt] * len(texts),
        image=depths,
        height=height,
        width=width,
        num_inference_steps=settings.steps,
        guidance_scale=settings.cfg,
        controlnet_conditioning_scale=settings.conditioning_scale,
        control_guidance_end=settings.control_end,
        latents=torch.cat(noise).to(pipe.unet.device, pipe.unet.dtype),
        generator=list(generators),
        output_type="pt",
    )
    return to_pil(result.images.float().permute(0, 2, 3, 1).cpu())


def _remove_stale_temps(root: Path) -> None:
    """Temp files a killed run left behind (atomic_path names them .<target>.<random>.tmp)."""
    patterns = [(root / NEGATIVES_DIR, r"\..+_neg\d+\.png\..+\.tmp"), (root, rf"\.{re.escape(METADATA_NAME)}.*\.tmp")]
    for folder, pattern in patterns:
        if folder.is_dir():
            for path in folder.iterdir():
                if re.fullmatch(pattern, path.name) and path.is_file():
                    logger.info("removing %s, left by an interrupted run", path)
                    path.unlink()


def generate_negatives(
    bundle: ModelBundle,
    controlnet: ControlNetModel,
    dataset: CCUBDataset | str | os.PathLike,
    depth: DepthProvider,
    settings: NegativeSettings = NegativeSettings(),
    on_step: OnStep | None = None,
    preview: str | os.PathLike | None = None,
) -> NegativesResult:
    """Write the missing negatives of a CCUB dataset (K per image) and list them in its metadata.

    `dataset`: from `load_ccub` (a folder path is loaded with it first: the same validation,
    except that listed negatives which are missing are regenerated rather than refused).
    Returns the result with `dataset` carrying the new negatives (nothing is read again).
    `on_step(done, total, logs)` after each image written (total = images to generate).
    `preview`: a PNG path for a grid original | depth | negatives of up to 8 images made now.
    """
    if not isinstance(dataset, CCUBDataset):
        dataset = load_ccub(dataset, missing_negatives_ok=True)
    items = dataset_images(dataset)
    root = dataset.root
    result = NegativesResult(root, dataset)
    _remove_stale_temps(root)
    metadata = MetadataFile(root) if (root / METADATA_NAME).exists() else None
    resolution = settings.resolution or bundle.resolution
    jobs, sizes = [], {}
    for item in items:
        for k in range(settings.k):
            if (root / item.negative_relpath(k)).is_file():
                result.already_there += 1
            else:
                jobs.append((item, k))
    if metadata is not None:
        _sync_metadata(metadata, items, root, settings.k, result)
    if not jobs:
        logger.info("negatives of %s are complete (%d); nothing to do", root, result.already_there)
        result.dataset = _listed(dataset, items, settings.k)
        return result
    for item in {item.index: item for item, _ in jobs}.values():
        image = load_rgb(item.image, dataset.background)
        sizes[item.index] = generation_size(image.size, resolution, bundle.vae_scale_factor)
    order = {size: i for i, size in reversed(list(enumerate(sizes[item.index] for item, _ in jobs)))}
    jobs.sort(key=lambda job: order[sizes[job[0].index]])
    batches = []
    for job in jobs:
        if batches and len(batches[-1]) < settings.batch_size and sizes[batches[-1][0][0].index] == sizes[job[0].index]:
            batches[-1].append(job)
        else:
            batches.append([job])
    pipe = controlnet_pipeline(bundle, controlnet, settings.scheduler)
    remaining = {item.index: sum(1 for j in jobs if j[0].index == item.index) for item, _ in jobs}
    depth_cache: dict[int, Image.Image] = {}
    shown: dict[int, CCUBImage] = {}
    preview_depths: dict[int, Image.Image] = {}
    for number, batch in enumerate(batches, start=1):
        size = sizes[batch[0][0].index]
        for item, _ in batch:
            if item.index not in depth_cache:
                depth_cache[item.index] = depth_image(depth(item), size)
        images = render(
            pipe,
            [item.text for item, _ in batch],
            [depth_cache[item.index] for item, _ in batch],
            [negative_seed(settings.seed, item.relpath, k) for item, k in batch],
            size,
            settings,
        )
        for (item, k), image in zip(batch, images, strict=True):
            path = root / item.negative_relpath(k)
            atomic_save_image(image, path)
            result.generated.append(path)
            remaining[item.index] -= 1
            if len(shown) < PREVIEW_ROWS or item.index in shown:
                shown[item.index] = item
                preview_depths[item.index] = depth_cache[item.index]
            if not remaining[item.index]:
                del depth_cache[item.index]
        if metadata is not None:
            _sync_metadata(metadata, [item for item, _ in batch], root, settings.k, result)
        if on_step is not None:
            before = len(result.generated) - len(batch)
            for done, (item, k) in enumerate(batch, start=before + 1):
                on_step(done, len(jobs), {"image": item.relpath, "k": k, "batch": number, "batches": len(batches)})
    logger.info("wrote %d negatives to %s (%d already there)", len(result.generated), root / NEGATIVES_DIR,
                result.already_there)
    result.dataset = _listed(dataset, items, settings.k)
    if preview is not None:
        grid = _preview_grid(list(shown.values()), preview_depths, root, settings.k, sizes, dataset.background)
        result.preview = save_grid(grid, preview)
    return result


def _present(root: Path, item: CCUBImage, k: int) -> list[str]:
    return [item.negative_relpath(j) for j in range(k) if (root / item.negative_relpath(j)).is_file()]


def _sync_metadata(
    metadata: MetadataFile, items: list[CCUBImage], root: Path, k: int, result: NegativesResult
) -> None:
    """List every existing negative of `items` in metadata.jsonl; save if anything changed."""
    changed = False
    for item in items:
        changed |= metadata.list_negatives(item.line, _present(root, item, k))
    if changed:
        metadata.save()
        result.metadata_written = True


def _listed(dataset: CCUBDataset, items: list[CCUBImage], k: int) -> CCUBDataset:
    """`dataset` with each record's negatives on disk listed, as a re-read would list them
    (a listed negative still missing is left out, with a warning)."""
    records = []
    for record, item in zip(dataset.records, items, strict=True):
        missing = [path for path in record.negatives if not path.is_file()]
        for path in missing:
            logger.warning("%s: listed negative %s does not exist; left out", record.source, path)
        kept = replace(record, negatives=tuple(p for p in record.negatives if p not in missing))
        records.append(with_negatives(kept, [dataset.root / rel for rel in _present(dataset.root, item, k)]))
    return dataset.with_records(records)


def _preview_grid(items, depths, root, k, sizes, background) -> Image.Image:
    columns: dict[str, list[Image.Image]] = {"original": [], "depth": []}
    for item in items:
        columns["original"].append(fit_cell(load_rgb(item.image, background), sizes[item.index]))
        columns["depth"].append(depths[item.index])
        for j in range(k):
            columns.setdefault(f"negative {j}", []).append(load_rgb(root / item.negative_relpath(j), background))
    return compare_grid(columns, [item.text for item in items])
