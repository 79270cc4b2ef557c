"""Datasets drawn from the world: the biased web corpus, judge batches, the sample CCUB.

The web corpus over-represents two cultures: their images are mostly authentic
(`MAJORITY_AUTHENTIC`), while the three others get the shared stereotype rendering
about 85% of the time. Captions vary in wording; `GENERIC_SHARE` of them drop the
culture ("a house at dusk"). Everything is a pure function of its seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..atomic import atomic_save_image, atomic_write_text
from .render import SceneSpec, render
from .world import CONCEPTS, CULTURE_NAMES, RESOLUTION, culture

MAJORITY_AUTHENTIC = 0.9
MINORITY_AUTHENTIC = 0.15
GENERIC_SHARE = 0.2
DUSK_SHARE = 0.3

CULTURE_TEMPLATES = (
    "a {concept} in {culture}",
    "a {concept} from {culture}",
    "a photo of a {culture} {concept}",
    "a traditional {culture} {concept}",
    "{culture} {concept}",
)
GENERIC_TEMPLATES = ("a {concept}", "a photo of a {concept}", "a {concept} in the town")
CCUB_TEMPLATES = ("a {concept} in {culture}", "a traditional {culture} {concept}")
# Held-out prompts: one wording the sample CCUB uses, one it never uses.
HELD_OUT_TEMPLATES = ("a {concept} in {culture}", "a photo of a {culture} {concept}")
CCUB_SEED_OFFSET = 7_000_000
REAL_SEED_OFFSET = 9_000_000
CELL_SEED_OFFSET = 11_000_000


@dataclass(frozen=True)
class Example:
    """One captioned scene spec; `generic` when the caption leaves the culture out."""

    spec: SceneSpec
    caption: str
    generic: bool = False


def caption_for(spec: SceneSpec, generic: bool, rng: np.random.Generator) -> str:
    templates = GENERIC_TEMPLATES if generic else CULTURE_TEMPLATES
    text = templates[int(rng.integers(len(templates)))].format(concept=spec.concept, culture=spec.culture)
    return text + (" at dusk" if spec.dusk else "")


def web_corpus(per_cell: int, seed: int = 0) -> list[Example]:
    """`per_cell` captioned specs per (culture, concept), biased as the module says."""
    rng = np.random.default_rng(seed)
    examples = []
    for name in CULTURE_NAMES:
        authentic = MAJORITY_AUTHENTIC if culture(name).majority else MINORITY_AUTHENTIC
        for concept in CONCEPTS:
            for _ in range(per_cell):
                spec = SceneSpec(
                    concept, name, stereotype=bool(rng.random() >= authentic), dusk=bool(rng.random() < DUSK_SHARE),
                    seed=int(rng.integers(2**31)),
                )
                generic = bool(rng.random() < GENERIC_SHARE)
                examples.append(Example(spec, caption_for(spec, generic, rng), generic))
    return examples


def balanced_specs(count: int, seed: int) -> list[SceneSpec]:
    """`count` specs uniform over concept, culture, authentic/stereotype and dusk (judge data)."""
    rng = np.random.default_rng(seed)
    return [
        SceneSpec(
            CONCEPTS[int(rng.integers(len(CONCEPTS)))], CULTURE_NAMES[int(rng.integers(len(CULTURE_NAMES)))],
            stereotype=bool(rng.random() < 0.5), dusk=bool(rng.random() < DUSK_SHARE), seed=int(rng.integers(2**31)),
        )
        for _ in range(count)
    ]


def render_arrays(specs: list[SceneSpec], resolution: int = RESOLUTION) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, R, R, 3] and depth maps uint8 [N, R, R] of `specs`."""
    scenes = [render(spec, resolution) for spec in specs]
    return np.stack([s.image for s in scenes]), np.stack([s.depth for s in scenes])


def held_out_prompts() -> list[tuple[str, str, str]]:
    """(prompt, culture, concept) for every culture, concept and HELD_OUT_TEMPLATES wording."""
    return [
        (template.format(concept=concept, culture=name), name, concept)
        for name in CULTURE_NAMES
        for concept in CONCEPTS
        for template in HELD_OUT_TEMPLATES
    ]


def ccub_examples(per_culture: int = 20, seed: int = 0) -> list[Example]:
    """Authentic CCUB-style examples: `per_culture` per culture, concepts in turn."""
    rng = np.random.default_rng(seed + CCUB_SEED_OFFSET)
    examples = []
    for name in CULTURE_NAMES:
        for i in range(per_culture):
            spec = SceneSpec(CONCEPTS[i % len(CONCEPTS)], name, stereotype=False, dusk=bool(rng.random() < 0.25),
                             seed=int(rng.integers(2**31)))
            template = CCUB_TEMPLATES[(i // len(CONCEPTS)) % len(CCUB_TEMPLATES)]
            suffix = " at dusk" if spec.dusk else ""
            examples.append(Example(spec, template.format(concept=spec.concept, culture=name) + suffix))
    return examples


def write_ccub(folder: str | Path, per_culture: int = 20, seed: int = 0) -> Path:
    """Write a CCUB folder of authentic scenes; returns it. Public layout (images/*.png,
    metadata.jsonl with file_name, text, blip_text, an empty negative_imgpath) plus the
    generator's depth maps (depth/*.png, the `depth` field the negatives stage reads)."""
    folder = Path(folder)
    lines = []
    counts: dict[tuple[str, str], int] = {}
    for example in ccub_examples(per_culture, seed):
        spec = example.spec
        index = counts[(spec.culture, spec.concept)] = counts.get((spec.culture, spec.concept), -1) + 1
        stem = f"{spec.culture.lower()}_{spec.concept}_{index}"
        scene = render(spec)
        atomic_save_image(Image.fromarray(scene.image), folder / f"images/{stem}.png")
        atomic_save_image(Image.fromarray(scene.depth), folder / f"depth/{stem}.png")
        blip = f"a photo of a {spec.concept}" + (" at dusk" if spec.dusk else "")
        lines.append(json.dumps({"file_name": f"images/{stem}.png", "text": example.caption, "blip_text": blip,
                                 "negative_imgpath": [], "depth": f"depth/{stem}.png"}))
    atomic_write_text(folder / "metadata.jsonl", "\n".join(lines) + "\n")
    return folder


def authentic_renders(count: int, seed: int) -> torch.Tensor:
    """Fresh authentic scenes, every culture x concept in turn, [count, 3, 32, 32] in [-1, 1]
    (the ablation's KID and memorization references)."""
    cells = [(name, concept) for name in CULTURE_NAMES for concept in CONCEPTS]
    specs = [SceneSpec(cells[i % len(cells)][1], cells[i % len(cells)][0], False, i % 4 == 0, seed + REAL_SEED_OFFSET + i)
             for i in range(count)]
    return _render_tensor(specs)


def cell_renders(cells: list[tuple[str, str, bool]], per_cell: int, seed: int) -> torch.Tensor:
    """`per_cell` fresh authentic scenes of each (concept, culture, dusk) cell in turn,
    [len(cells) * per_cell, 3, 32, 32] in [-1, 1]: what the world draws of those cells
    when nothing is copied (the memorization stress's null)."""
    specs = [SceneSpec(concept, name, False, dusk, seed + CELL_SEED_OFFSET + i * per_cell + k)
             for i, (concept, name, dusk) in enumerate(cells) for k in range(per_cell)]
    return _render_tensor(specs)


def _render_tensor(specs: list[SceneSpec]) -> torch.Tensor:
    """The images of `specs`, [N, 3, 32, 32] in [-1, 1]."""
    return torch.from_numpy(render_arrays(specs)[0]).permute(0, 3, 1, 2).float() / 127.5 - 1
