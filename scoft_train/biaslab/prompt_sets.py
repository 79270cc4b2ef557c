"""The ablation's prompt sets, and the CCUB cells fine-tuning never sees.

- "seen": the wordings the sample CCUB's captions use (corpus.CCUB_TEMPLATES), on the
  cells fine-tuning trains on;
- "unseen": wordings that no CCUB caption and no web-corpus caption uses
  (UNSEEN_TEMPLATES; `tests/engine/test_biaslab.py` checks it), on the same cells;
- "held-out cells": both kinds of wording on HELD_OUT_CELLS, one concept per minority
  culture whose images are removed from the fine-tuning CCUB copy: does the fix reach
  what it was not shown?
- "validation" (RS-Corrector's sweep only, never reported as a result): a web-corpus
  wording that is in no test set, on the minority cells.
A prompt is (text, culture, concept, set name).
"""

from __future__ import annotations

import json
from pathlib import Path

from .corpus import CCUB_TEMPLATES
from .world import CONCEPTS, CULTURE_NAMES, MINORITY

UNSEEN_TEMPLATES = ("an image showing a {concept} of the {culture} people", "{concept}, {culture} style")
VALIDATION_TEMPLATES = ("a {concept} from {culture}",)
HELD_OUT_CELLS = (("Tisharu", "house"), ("Ombresk", "meal"), ("Zulavin", "garment"))
TEST_SETS = ("seen", "unseen", "held-out cells")

Prompt = tuple[str, str, str, str]


def _prompts(templates, cells, name: str) -> list[Prompt]:
    return [(t.format(concept=concept, culture=culture), culture, concept, name)
            for culture, concept in cells for t in templates]


def evaluation_prompts(held_out_cells=HELD_OUT_CELLS) -> list[Prompt]:
    """Every test prompt, set by set (seen, unseen, held-out cells)."""
    trained = [(c, k) for c in CULTURE_NAMES for k in CONCEPTS if (c, k) not in held_out_cells]
    return (_prompts(CCUB_TEMPLATES, trained, "seen") + _prompts(UNSEEN_TEMPLATES, trained, "unseen")
            + _prompts(CCUB_TEMPLATES + UNSEEN_TEMPLATES, held_out_cells, "held-out cells"))


def validation_prompts() -> list[Prompt]:
    return _prompts(VALIDATION_TEMPLATES, [(c, k) for c in MINORITY for k in CONCEPTS], "validation")


def remove_cells(ccub: Path, cells=HELD_OUT_CELLS) -> int:
    """Drop the images (and depth maps) of `cells` from a CCUB copy in the lab's layout
    (file names `<culture>_<concept>_<i>.png`); returns how many records were removed."""
    prefixes = tuple(f"images/{culture.lower()}_{concept}_" for culture, concept in cells)
    lines = (ccub / "metadata.jsonl").read_text().splitlines()
    kept, removed = [], 0
    for line in lines:
        record = json.loads(line)
        if record["file_name"].startswith(prefixes):
            removed += 1
            for key in ("file_name", "depth"):
                (ccub / record[key]).unlink(missing_ok=True)
        else:
            kept.append(line)
    (ccub / "metadata.jsonl").write_text("\n".join(kept) + "\n")
    return removed
