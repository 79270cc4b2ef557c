"""DreamBooth-style image folders: the instance (reference spurious) images and the
class (prior) images, each a folder of images sharing one prompt.

Both are served by the CCUB dataset class (`data.CCUBDataset`): one record per image,
caption = the folder's prompt, no negatives; items are [3,R,R] tensors in [-1,1] with
center or random crop and optional flip, exactly as for SCoFT training. Files are listed
by `ccub_folder.image_files` and read by `imagefile.load_rgb`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..ccub_folder import CCUBRecord, DatasetError, image_files
from ..data import CCUBDataset
from ..imagefile import ImageFileError, read_rgb

__all__ = ["image_files", "load_image_folder"]


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
        f"{root}: no image files found" if root.is_dir() else f"{root}: folder not found"
    ]
    for path in files:
        try:
            read_rgb(path)
        except ImageFileError as error:
            problems.append(f"{path.name}: not a readable image ({str(error).removeprefix(f'{path}: ')})")
    if problems:
        raise DatasetError(root, problems)
    records = [CCUBRecord(path, prompt, prompt, (), path.name, path.name) for path in files]
    return CCUBDataset(root, records, 0, resolution, center_crop, random_flip)
