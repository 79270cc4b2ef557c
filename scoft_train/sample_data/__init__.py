"""Sample data shipped with the engine, so the demo and the tests need no download.

`CCUB_DEMO_DIR`: a tiny CCUB folder in the public layout (metadata.jsonl with text,
blip_text and negative_imgpath; images/ and negatives/), 8 procedural 64x64 PNG scenes
(houses and meals) with one drab, flattened negative each.
"""

from pathlib import Path

CCUB_DEMO_DIR = Path(__file__).resolve().parent / "ccub_demo"
