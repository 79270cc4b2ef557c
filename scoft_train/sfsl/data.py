"""DreamBooth-style image folders: the instance (reference spurious) images and the
class (prior) images, each a folder of images sharing one prompt.

Both are served by the CCUB dataset class (`data.CCUBDataset`): one record per image,
caption = the folder's prompt, no negatives; items are [3,R,R] tensors in [-1,1] with
center or random crop and optional flip, exactly as for SCoFT training.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..data import IMAGE_SUFFIXES, CCUBDataset, CCUBRecord, DatasetError


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files at the top of `folder` (png/jpg/jpeg/webp, hidden files skipped), sorted by name."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def load_image_folder(
    folder: str | os.PathLike,
    prompt: str,
    resolution: int = 512,
    center_crop: bool = True,
    random_flip: bool = False,
) -> CCUBDataset:
    """Every image in `folder` with caption `prompt`, validated (each decoded once) before use.

    Raises DatasetError naming every unreadable image, or the empty/missing folder.
    """
    root = Path(folder).expanduser().absolute()
    files = image_files(root)
    problems = [] if files else [
        f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found" if root.is_dir() else f"{root}: folder not found"
    ]
    for path in files:
        try:
            with Image.open(path) as image:
                image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            problems.append(f"{path.name}: not a readable image ({error})")
    if problems:
        raise DatasetError(root, problems)
    records = [CCUBRecord(path, prompt, prompt, (), path.name) for path in files]
    return CCUBDataset(root, records, 0, resolution, center_crop, random_flip)
