"""Sample data shipped with the engine, so the demo and the tests need no download.

`CCUB_DEMO_DIR`: a tiny CCUB folder in the public layout (metadata.jsonl with text,
blip_text and negative_imgpath; images/ and negatives/), 8 procedural 64x64 PNG scenes
(houses and meals) with one drab, flattened negative each.
"""

from pathlib import Path

CCUB_DEMO_DIR = Path(__file__).resolve().parent / "ccub_demo"


def working_copy(source: Path, destination: Path) -> Path:
    """A writable copy of a shipped sample folder at `destination`, made once.

    Stages that write into a dataset (negatives) must never touch the package's own
    files; the copy is made beside the destination and renamed into place, so a
    half-made copy is never taken for a dataset.
    """
    import shutil
    import tempfile

    if destination.exists():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}."))
    try:
        shutil.copytree(source, staging / "copy")
        (staging / "copy").rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination
