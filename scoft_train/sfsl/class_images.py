"""Class (prior-preservation) images: generated once by the frozen base model, cached.

`class_NNNNN.png` in the folder is image NNNNN, drawn from seed `seed + NNNNN`; a run
generates only the missing indices (each written atomically, so an interrupted run
loses at most the image in progress) and a complete folder costs nothing. The
folder's `class_images.json` records what made the images (prompt, seed, sampler,
base-model fingerprint) and a run with other settings is refused rather than mixing
two priors.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..atomic import atomic_save_image, atomic_write_text
from ..progress import OnStep
from ..sampling import sample

log = logging.getLogger(__name__)

MANIFEST = "class_images.json"


def class_image_path(folder: Path, index: int) -> Path:
    return folder / f"class_{index:05d}.png"


def _manifest(bundle, prompt: str, seed: int, steps: int, cfg: float, scheduler: str, size) -> dict:
    return {"prompt": prompt, "seed": seed, "steps": steps, "cfg": cfg, "scheduler": scheduler,
            "size": size, "base_fingerprint": bundle.fingerprint}


def _check_manifest(folder: Path, wanted: dict) -> None:
    path = folder / MANIFEST
    if not path.is_file():
        if any(folder.glob("class_*.png")):
            raise ValueError(f"{folder} holds class_*.png images but no {MANIFEST}: they were not made here; "
                             "use an empty folder")
        atomic_write_text(path, json.dumps(wanted, indent=2, sort_keys=True))
        return
    found = json.loads(path.read_text(encoding="utf-8"))
    changed = sorted(key for key in wanted if found.get(key) != wanted[key])
    if changed:
        detail = ", ".join(f"{k}: {found.get(k)!r} there vs {wanted[k]!r} now" for k in changed)
        raise ValueError(f"{folder} holds class images made with other settings ({detail}); "
                         "use another folder or the same settings")


def ensure_class_images(
    bundle,
    folder: str | os.PathLike,
    prompt: str,
    count: int = 100,
    seed: int = 0,
    steps: int = 30,
    cfg: float = 7.5,
    scheduler: str = "ddim",
    size: int | None = None,
    on_step: OnStep | None = None,
) -> list[Path]:
    """Make sure `folder` holds class images 0..count-1 of `prompt`; returns their paths.

    Only missing images are generated (one sampler call each, seed + index, so a
    regenerated image equals the one it replaces); on_step(done, missing, logs) after each.
    """
    if count < 1:
        raise ValueError(f"class image count must be >= 1, got {count}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _check_manifest(folder, _manifest(bundle, prompt, seed, steps, cfg, scheduler, size))
    paths = [class_image_path(folder, i) for i in range(count)]
    missing = [i for i, path in enumerate(paths) if not path.is_file()]
    log.info("class images in %s: %d present, %d to generate (%r)", folder, count - len(missing), len(missing), prompt)
    for done, index in enumerate(missing, start=1):
        image = sample(bundle, [prompt], [seed + index], steps=steps, cfg=cfg, scheduler=scheduler, size=size)[0]
        atomic_save_image(image, paths[index])
        if on_step is not None:
            on_step(done, len(missing), {"index": index, "seed": seed + index})
    return paths
