"""The CCUB dataset: validated records (from `ccub_folder`, the one folder reader) served
as training tensors, with generic captions derived where `blip_text` is missing.

A missing `blip_text` is derived from `text` by removing culture terms. Captions longer
than CLIP's 77 tokens are reported (`caption_tokens`), or refused with `strict_captions`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from .caption_tokens import truncation_notes
from .ccub_folder import (
    DEPTH_SUFFIX,
    METADATA_NAME,
    NEGATIVES_DIR,
    CCUBRecord,
    DatasetError,
    read_folder,
)
from .imagefile import IMAGE_SUFFIXES, WHITE, Background, load_rgb

__all__ = [
    "DEFAULT_CULTURE_TERMS", "DEPTH_SUFFIX", "IMAGE_SUFFIXES", "METADATA_NAME", "NEGATIVES_DIR", "CCUBDataset",
    "CCUBRecord", "DatasetError", "generic_caption", "load_ccub",
]

logger = logging.getLogger(__name__)

_NATIONALITIES = (
    "Chinese", "Korean", "South Korean", "Indian", "Mexican", "Nigerian", "Japanese",
    "Thai", "Vietnamese", "Indonesian", "Filipino", "Pakistani", "Bangladeshi",
    "Iranian", "Persian", "Turkish", "Arab", "Arabic", "Egyptian", "Ethiopian",
    "Kenyan", "Ghanaian", "Yoruba", "Igbo", "Hausa", "Brazilian", "Peruvian",
    "Asian", "East Asian", "South Asian", "African", "West African", "Latin American",
)
_PLACES = (
    "China", "Korea", "South Korea", "India", "Mexico", "Nigeria", "Japan", "Thailand",
    "Vietnam", "Indonesia", "the Philippines", "Pakistan", "Bangladesh", "Iran",
    "Egypt", "Ethiopia", "Kenya", "Ghana", "Brazil", "Peru", "Asia", "Africa",
    "Latin America",
)
_PLACE_PREPOSITIONS = ("in", "from", "of", "across", "throughout")

# Removed by `generic_caption` (whole words, case-insensitive): nationality/culture
# words, place names, and "in <place>"-style phrases so no dangling preposition is left.
DEFAULT_CULTURE_TERMS: tuple[str, ...] = (
    _NATIONALITIES
    + _PLACES
    + tuple(f"{prep} {place}" for prep in _PLACE_PREPOSITIONS for place in _PLACES)
)

_DANGLING = r"(?:in|from|of|at|on|near|across|around|throughout)"
_PUNCT = ",.;:!?"


def generic_caption(text: str, terms: Sequence[str] = DEFAULT_CULTURE_TERMS) -> str:
    """`text` with every culture term removed (whole words, case-insensitive, plurals and
    possessives included), lists of terms removed together ("Korean and Chinese"),
    a/an re-agreed, and dangling prepositions, commas and spaces tidied:
    "a house in Korea" -> "a house", "an Indian woman" -> "a woman".
    Returns `text.strip()` unchanged if no term occurs."""
    words = sorted({t.strip() for t in terms if t.strip()}, key=len, reverse=True)
    if not words:
        return text.strip()
    one = "(?:" + "|".join(r"\s+".join(map(re.escape, w.split())) for w in words) + r")(?:'s|’s|s)?"
    joiner = r"(?:\s*,\s*(?:and\s+|or\s+)?|\s+and\s+|\s+or\s+|\s*&\s*)"
    pattern = re.compile(rf"(?:\b(?P<article>an?)\s+)?\b{one}(?:{joiner}{one})*\b", re.IGNORECASE)
    removed, count = pattern.subn(lambda m: f" \0{m['article']}\0 " if m["article"] else " ", text)
    if not count:
        return text.strip()
    return _tidy(removed)


def _tidy(text: str) -> str:
    text = re.sub(r"\0(an?)\0\s*(?=(\w?))", _reagree_article, text, flags=re.IGNORECASE)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(rf"\s+([{_PUNCT}])", r"\1", text)
    previous = None
    while previous != text:
        previous = text
        text = re.sub(rf"\s*\b{_DANGLING}\s*(?=[{_PUNCT}]|$)", "", text, flags=re.IGNORECASE)
        text = re.sub(rf"[,;:]\s*(?=[{_PUNCT}]|$)", "", text)
    return text.strip(" ,;:")


def _reagree_article(match: re.Match) -> str:
    article, following = match[1], match[2]
    if not following:
        return ""
    fixed = "an" if following.lower() in "aeiou" else "a"
    return (fixed.capitalize() if article[0].isupper() else fixed) + " "


class CCUBDataset(Dataset):
    """Validated CCUB records served as training tensors.

    Item: pixel_values FloatTensor[3,R,R] in [-1,1]; negatives FloatTensor[K,3,R,R] in
    [-1,1] (K >= 0) with the same crop and flip as the positive; text, generic_text,
    index. R = `resolution`.
    """

    def __init__(
        self,
        root: Path,
        records: Sequence[CCUBRecord],
        derived: int = 0,
        resolution: int = 64,
        center_crop: bool = True,
        random_flip: bool = False,
        culture_terms: Sequence[str] = DEFAULT_CULTURE_TERMS,
        background: Background = WHITE,
        notes: Sequence[str] = (),
    ):
        if resolution < 1:
            raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
        self.root = root
        self.records = tuple(records)
        self.derived = derived
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.culture_terms = tuple(culture_terms)
        self.background = background
        self.notes = tuple(notes)

    def with_records(self, records: Sequence[CCUBRecord]) -> CCUBDataset:
        """The same dataset settings over new records (e.g. with new negatives listed)."""
        return CCUBDataset(
            self.root, records, self.derived, self.resolution, self.center_crop, self.random_flip,
            self.culture_terms, self.background, self.notes,
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return self.get(index, None)

    def get(self, index: int, generator: torch.Generator | None = None) -> dict:
        """Item `index`. With no generator: center crop, no flip (deterministic). With one,
        it draws the random crop (if not center_crop) and then the flip (if random_flip)."""
        record = self.records[index]
        positive = self._resized(record.image, None)
        width, height = positive.size
        top, left = (height - self.resolution) // 2, (width - self.resolution) // 2
        if generator is not None and not self.center_crop:
            top = int(torch.randint(0, height - self.resolution + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - self.resolution + 1, (1,), generator=generator))
        flip = generator is not None and self.random_flip and bool(torch.rand(1, generator=generator) < 0.5)
        images = [positive] + [self._resized(p, (height, width)) for p in record.negatives]
        tensors = [self._to_tensor(image, top, left, flip) for image in images]
        negatives = torch.stack(tensors[1:]) if len(tensors) > 1 else torch.empty(0, 3, self.resolution, self.resolution)
        return dict(
            pixel_values=tensors[0],
            negatives=negatives,
            text=record.text,
            generic_text=record.generic_text,
            index=index,
        )

    def _resized(self, path: Path, size: tuple[int, int] | None) -> Image.Image:
        """RGB image, shorter side resized to `resolution` (or to exactly `size` = (H, W))."""
        rgb = load_rgb(path, self.background)
        target = list(size) if size is not None else self.resolution
        return TF.resize(rgb, target, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)

    def _to_tensor(self, image: Image.Image, top: int, left: int, flip: bool) -> torch.Tensor:
        image = TF.crop(image, top, left, self.resolution, self.resolution)
        if flip:
            image = TF.hflip(image)
        return TF.to_tensor(image) * 2.0 - 1.0

    def summary(self) -> dict:
        """Counts: images, captions, generic_captions_derived, negatives, plus fingerprint."""
        return dict(
            images=len(self.records),
            captions=sum(1 for r in self.records if r.text),
            generic_captions_derived=self.derived,
            negatives=sum(len(r.negatives) for r in self.records),
            fingerprint=self.fingerprint,
        )

    @property
    def fingerprint(self) -> str:
        """16 hex digits of sha256 over captions, relative image paths and file sizes."""
        digest = hashlib.sha256()
        for record in self.records:
            files = (record.image,) + record.negatives
            item = [record.text, record.generic_text] + [
                [p.relative_to(self.root).as_posix(), p.stat().st_size] for p in files
            ]
            digest.update(json.dumps(item, ensure_ascii=False).encode("utf-8"))
        return digest.hexdigest()[:16]


def load_ccub(
    folder: str | os.PathLike,
    culture_terms: Sequence[str] = DEFAULT_CULTURE_TERMS,
    resolution: int = 64,
    center_crop: bool = True,
    random_flip: bool = False,
    background: Background = WHITE,
    strict_captions: bool = False,
    missing_negatives_ok: bool = False,
) -> CCUBDataset:
    """Load and fully validate a CCUB folder (see `ccub_folder` for the layouts).

    `background`: RGB that transparent pixels are composited onto. `strict_captions`:
    refuse captions longer than CLIP's 77 tokens instead of reporting them.
    `missing_negatives_ok`: keep listed negatives that are missing (the negatives stage
    regenerates them) instead of refusing them.
    Raises DatasetError listing every problem; reads only, never writes.
    """
    contents = read_folder(folder, background, missing_negatives_ok)
    root = contents.root
    records, derived = [], 0
    for record, needs_generic in contents.entries:
        if needs_generic:
            derived += 1
            record = replace(record, generic_text=generic_caption(record.text, culture_terms))
        records.append(record)
    if derived:
        logger.info(
            "CCUB %s: derived %d of %d generic captions from 'text' by removing culture terms (no blip_text given)",
            root, derived, len(records),
        )
    too_long = truncation_notes(records)
    if too_long and strict_captions:
        raise DatasetError(root, [f"{note} (refused: strict captions)" for note in too_long])
    if contents.transparent:
        logger.info(
            "CCUB %s: %d of %d images have transparent areas; composited onto RGB %s",
            root, contents.transparent, contents.images_read, background,
        )
    notes = contents.notes + too_long
    for note in notes:
        logger.warning("CCUB %s: %s", root, note)
    return CCUBDataset(root, records, derived, resolution, center_crop, random_flip, culture_terms, background, notes)
