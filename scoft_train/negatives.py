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
  from before the run is kept as `metadata.jsonl.bak`.
- Layout B (sidecar captions): no metadata.jsonl is written (it would switch the folder
  to layout A); `negatives/<stem>_neg<k>.png` is what that layout discovers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
from PIL import Image

from .atomic import atomic_save_image, atomic_write_bytes
from .data import DEPTH_SUFFIX, IMAGE_SUFFIXES, METADATA_NAME, NEGATIVES_DIR, DatasetError
from .depth import DepthEstimator, depth_image
from .grid import compare_grid, save_grid
from .models import ModelBundle
from .progress import OnStep
from .sampling import SCHEDULERS, initial_noise, make_scheduler, to_pil

logger = logging.getLogger(__name__)

BACKUP_SUFFIX = ".bak"
PREVIEW_ROWS = 8


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
    """One image of the folder. `line`: its index in metadata.jsonl (None in layout B);
    `depth`: the metadata's `depth` path, absolute, if given."""

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
    root: Path
    generated: list[Path] = field(default_factory=list)
    already_there: int = 0
    metadata_written: bool = False
    preview: Path | None = None


def negative_seed(seed: int, relpath: str, k: int) -> int:
    """A 63-bit seed from (base seed, image path relative to the folder, k): stable across runs."""
    digest = hashlib.sha256(f"{seed}\0{relpath}\0{k}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def _inside(root: Path, raw: str) -> Path | None:
    path = (root / raw.replace("\\", "/")).resolve()
    return path if path.is_relative_to(root.resolve()) and path.is_file() else None


def list_images(folder: str | os.PathLike) -> list[CCUBImage]:
    """The folder's images in dataset order (metadata.jsonl line order, or sorted names in
    layout B, `*_depth.*` maps excluded). Raises DatasetError listing every problem."""
    root = Path(folder).expanduser().absolute()
    if not root.is_dir():
        raise DatasetError(root, [f"{root}: dataset folder not found"])
    problems: list[str] = []
    items = _from_metadata(root, problems) if (root / METADATA_NAME).exists() else _from_sidecars(root, problems)
    seen: dict[str, str] = {}
    for item in items:
        if item.stem in seen:
            problems.append(f"{item.relpath}: same file stem as {seen[item.stem]}; negatives/{item.stem}_neg<k>.png "
                            "would collide, rename one of them")
        seen.setdefault(item.stem, item.relpath)
    if not items and not problems:
        problems.append("no images found; the dataset is empty")
    if problems:
        raise DatasetError(root, problems)
    return items


def _from_metadata(root: Path, problems: list[str]) -> list[CCUBImage]:
    items = []
    for number, line in enumerate((root / METADATA_NAME).read_text(encoding="utf-8").split("\n")):
        where = f"{METADATA_NAME} line {number + 1}"
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(f"{where}: not valid JSON ({error})")
            continue
        file_name, text, depth = entry.get("file_name"), entry.get("text"), entry.get("depth")
        negatives = entry.get("negative_imgpath", [])
        image = _inside(root, file_name) if isinstance(file_name, str) else None
        if image is None:
            problems.append(f"{where}: 'file_name' {file_name!r} is not an image file inside the dataset folder")
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{where}: 'text' must be a non-empty string, got {text!r}")
        if negatives is not None and not isinstance(negatives, list):
            problems.append(f"{where}: 'negative_imgpath' must be a list of paths, got {type(negatives).__name__}")
        if depth is not None and not isinstance(depth, str):
            problems.append(f"{where}: 'depth' must be a path string, got {type(depth).__name__}")
        if image is not None and isinstance(text, str) and text.strip():
            relpath = image.relative_to(root.resolve()).as_posix()
            depth_path = root / depth.replace("\\", "/") if isinstance(depth, str) else None
            items.append(CCUBImage(len(items), image, relpath, text.strip(), number, depth_path))
    return items


def _from_sidecars(root: Path, problems: list[str]) -> list[CCUBImage]:
    items = []
    for path in sorted(root.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.stem.endswith(DEPTH_SUFFIX) or not path.is_file():
            continue
        caption = path.with_suffix(".txt")
        text = caption.read_text(encoding="utf-8").strip() if caption.is_file() else ""
        if not text:
            problems.append(f"{path.name}: no caption in {caption.name}")
            continue
        items.append(CCUBImage(len(items), path, path.name, text))
    return items


def depth_from_estimator(estimator: DepthEstimator) -> DepthProvider:
    """Depth estimated from each CCUB image (see depth.load_depth_estimator)."""

    def provide(item: CCUBImage) -> Image.Image:
        with Image.open(item.image) as image:
            return estimator(image.convert("RGB"))

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
        with Image.open(path) as depth:
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
    """(W, H): short side `resolution`, aspect kept, both rounded to multiples of `factor`."""
    width, height = image_size
    scale = resolution / min(width, height)
    return tuple(max(factor, round(side * scale / factor) * factor) for side in (width, height))


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


class _MetadataFile:
    """metadata.jsonl kept as text lines; rewritten atomically, with a .bak of the pre-run version."""

    def __init__(self, root: Path):
        self.path = root / METADATA_NAME
        self.original = self.path.read_bytes()
        self.lines = self.original.decode("utf-8").split("\n")
        self.backed_up = False

    def list_negatives(self, item: CCUBImage, relpaths: list[str]) -> bool:
        """Append the missing `relpaths` to the item's negative_imgpath; True if it changed."""
        line = self.lines[item.line]
        entry = json.loads(line)
        listed = entry.get("negative_imgpath") or []
        missing = [p for p in relpaths if p not in listed]
        if not missing:
            return False
        entry["negative_imgpath"] = listed + missing
        self.lines[item.line] = json.dumps(entry, ensure_ascii=False) + ("\r" if line.endswith("\r") else "")
        return True

    def save(self) -> None:
        if not self.backed_up:
            atomic_write_bytes(self.path.with_name(METADATA_NAME + BACKUP_SUFFIX), self.original)
            self.backed_up = True
        atomic_write_bytes(self.path, "\n".join(self.lines).encode("utf-8"))


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
    folder: str | os.PathLike,
    depth: DepthProvider,
    settings: NegativeSettings = NegativeSettings(),
    on_step: OnStep | None = None,
    preview: str | os.PathLike | None = None,
) -> NegativesResult:
    """Write the missing negatives of a CCUB folder (K per image) and list them in its metadata.

    `on_step(done, total, logs)` after each image written (total = images to generate).
    `preview`: a PNG path for a grid original | depth | negatives of up to 8 images made now.
    """
    items = list_images(folder)
    root = Path(folder).expanduser().absolute()
    result = NegativesResult(root)
    _remove_stale_temps(root)
    metadata = _MetadataFile(root) if (root / METADATA_NAME).exists() else None
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
        return result
    for item in {item.index: item for item, _ in jobs}.values():
        with Image.open(item.image) as image:
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
    if preview is not None:
        grid = _preview_grid(list(shown.values()), preview_depths, root, settings.k, sizes)
        result.preview = save_grid(grid, preview)
    return result


def _sync_metadata(
    metadata: _MetadataFile, items: list[CCUBImage], root: Path, k: int, result: NegativesResult
) -> None:
    """List every existing negative of `items` in metadata.jsonl; save if anything changed."""
    changed = False
    for item in items:
        present = [item.negative_relpath(j) for j in range(k) if (root / item.negative_relpath(j)).is_file()]
        changed |= metadata.list_negatives(item, present)
    if changed:
        metadata.save()
        result.metadata_written = True


def _preview_grid(items, depths, root, k, sizes) -> Image.Image:
    columns: dict[str, list[Image.Image]] = {"original": [], "depth": []}
    for item in items:
        with Image.open(item.image) as image:
            columns["original"].append(image.convert("RGB").resize(sizes[item.index], Image.BICUBIC))
        columns["depth"].append(depths[item.index])
        for j in range(k):
            with Image.open(root / item.negative_relpath(j)) as negative:
                columns.setdefault(f"negative {j}", []).append(negative.convert("RGB"))
    return compare_grid(columns, [item.text for item in items])
