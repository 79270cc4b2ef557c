"""The CCUB dataset: load, validate up front, and serve training tensors.

Two layouts are accepted:

- A (the public CCUB layout): `metadata.jsonl`, one JSON object a line with
  `file_name`, `text`, optional `blip_text` and optional `negative_imgpath` (a list);
  all paths relative to the folder holding `metadata.jsonl`.
- B: images (png/jpg/jpeg/webp) at the top of the folder, each with a sidecar
  `<stem>.txt` holding the culturally specific caption; negatives, if any, as
  `negatives/<stem>_neg<k>.<ext>`.

Validation reads everything (and decodes every image) before training starts,
collects all problems and raises one `DatasetError`; it never writes to disk.
A missing `blip_text` is derived from `text` by removing culture terms.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterator, Sequence

import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFile
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

METADATA_NAME = "metadata.jsonl"
NEGATIVES_DIR = "negatives"
DEPTH_SUFFIX = "_depth"  # `<stem>_depth.png` beside an image is its depth map, not an example
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

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


class DatasetError(ValueError):
    """The dataset failed validation; `.problems` lists every problem found, each naming
    the file (and line, for metadata.jsonl)."""

    def __init__(self, root: Path, problems: Sequence[str]):
        self.root = root
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"CCUB dataset {root} has {len(self.problems)} problem(s); fix or remove these entries and load again:\n{lines}"
        )


@dataclass(frozen=True)
class CCUBRecord:
    """One validated example. Paths are absolute (root joined with the stored relative
    path); `source` is "metadata.jsonl line N" or the sidecar caption file name."""

    image: Path
    text: str
    generic_text: str
    negatives: tuple[Path, ...]
    source: str


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


@contextlib.contextmanager
def _strict_pillow() -> Iterator[None]:
    """Make Pillow raise on truncated images while validating, whatever the host set."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _image_problem(path: Path) -> str | None:
    """None if `path` decodes fully, else why not."""
    if not path.is_file():
        return f"not found at {path}" if not path.exists() else f"is not a regular file ({path})"
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        return f"cannot be decoded as an image ({type(error).__name__}: {error})"
    return None


def _relative_problem(root: Path, raw: str) -> str | None:
    """None if `raw` is a relative path that stays inside `root` without symlinks."""
    if not raw.strip():
        return "is empty"
    if raw.startswith(("/", "\\")) or PureWindowsPath(raw).drive or os.path.isabs(raw):
        return "is an absolute path; paths must be relative to the dataset folder"
    parts = PurePosixPath(raw.replace("\\", "/")).parts
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return "escapes the dataset folder through '..'"
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            return f"goes through a symlink ({current.relative_to(root).as_posix()}); copy the file in instead"
    return None


def _check_file(root: Path, raw: str, where: str, what: str, problems: list[str]) -> Path | None:
    """Append problems for one referenced image; return its absolute path when valid."""
    problem = _relative_problem(root, raw)
    path = root / raw.replace("\\", "/")
    if problem is None:
        problem = _image_problem(path)
    if problem is not None:
        problems.append(f"{where}: {what} '{raw}' {problem}")
        return None
    return path


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _parse_metadata(root: Path, problems: list[str]) -> list[tuple[CCUBRecord, bool]]:
    """Layout A: records (with "generic was derived" flags) from metadata.jsonl."""
    try:
        raw_lines = (root / METADATA_NAME).read_bytes().splitlines()
    except OSError as error:
        problems.append(f"{METADATA_NAME}: cannot be read ({error})")
        return []
    entries, seen = [], {}
    for number, raw in enumerate(raw_lines, start=1):
        where = f"{METADATA_NAME} line {number}"
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            problems.append(f"{where}: not valid JSON ({error})")
            continue
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a JSON object, got {_type_name(entry)}")
            continue
        record = _metadata_record(root, entry, where, problems, seen)
        if record is not None:
            entries.append(record)
    if not raw_lines or all(not line.strip() for line in raw_lines):
        problems.append(f"{METADATA_NAME}: no entries; the dataset is empty")
    return entries


def _metadata_record(
    root: Path, entry: dict, where: str, problems: list[str], seen: dict[str, str]
) -> tuple[CCUBRecord, bool] | None:
    before = len(problems)
    file_name, text = entry.get("file_name"), entry.get("text")
    blip, negatives = entry.get("blip_text"), entry.get("negative_imgpath", [])
    image = None
    if not isinstance(file_name, str):
        problems.append(f"{where}: field 'file_name' must be a string, got {_type_name(file_name)}")
    else:
        key = os.path.normpath(file_name.replace("\\", "/"))
        if key in seen:
            problems.append(f"{where}: duplicate entry for '{file_name}' (first at {seen[key]})")
        else:
            seen[key] = where
            image = _check_file(root, file_name, where, "image", problems)
    if not isinstance(text, str):
        problems.append(f"{where}: field 'text' must be a string, got {_type_name(text)}")
    elif not text.strip():
        problems.append(f"{where}: field 'text' is empty")
    if blip is not None and not isinstance(blip, str):
        problems.append(f"{where}: field 'blip_text' must be a string or absent, got {_type_name(blip)}")
    if negatives is None:
        negatives = []
    if not isinstance(negatives, list):
        problems.append(f"{where}: field 'negative_imgpath' must be a list of paths, got {_type_name(negatives)}")
        negatives = []
    negative_paths = []
    for k, raw in enumerate(negatives):
        if not isinstance(raw, str):
            problems.append(f"{where}: negative_imgpath[{k}] must be a string, got {_type_name(raw)}")
            continue
        negative_paths.append(_check_file(root, raw, where, f"negative_imgpath[{k}]", problems))
    if len(problems) > before:
        return None
    derived = not (isinstance(blip, str) and blip.strip())
    return CCUBRecord(image, text.strip(), "" if derived else blip.strip(), tuple(negative_paths), where), derived


def _scan_sidecars(root: Path, problems: list[str]) -> list[tuple[CCUBRecord, bool]]:
    """Layout B: records from top-level images with `<stem>.txt` sidecar captions
    (`<stem>_depth.<ext>` files are depth maps, not examples)."""
    images = sorted(
        p for p in root.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir() and not p.stem.endswith(DEPTH_SUFFIX)
    )
    if not images:
        problems.append(f"no {METADATA_NAME} and no images ({', '.join(IMAGE_SUFFIXES)}) in the folder; the dataset is empty")
        return []
    negatives = _scan_negatives(root, problems)
    entries, seen = [], {}
    for path in images:
        sidecar = path.with_suffix(".txt")
        if path.stem in seen:
            problems.append(f"{path.name}: duplicate entry, {seen[path.stem]} has the same stem and caption file")
            continue
        seen[path.stem] = path.name
        image = _check_file(root, path.name, path.name, "image", problems)
        text = _read_sidecar(sidecar, path.name, problems)
        stem_negatives = tuple(
            _check_file(root, f"{NEGATIVES_DIR}/{name}", f"{NEGATIVES_DIR}/{name}", "negative", problems)
            for name in negatives.pop(path.stem, [])
        )
        if image is not None and text is not None and None not in stem_negatives:
            entries.append((CCUBRecord(image, text, "", stem_negatives, sidecar.name), True))
    for stem, names in negatives.items():
        logger.warning("%s/%s: no image with stem '%s'; negative ignored", NEGATIVES_DIR, names[0], stem)
    return entries


def _scan_negatives(root: Path, problems: list[str]) -> dict[str, list[str]]:
    """{stem: [file names sorted by k]} from negatives/<stem>_neg<k>.<ext>."""
    folder = root / NEGATIVES_DIR
    if folder.is_symlink():
        problems.append(f"{NEGATIVES_DIR}/: is a symlink; copy the folder in instead")
        return {}
    if not folder.is_dir():
        return {}
    found: dict[str, list[tuple[int, str]]] = {}
    for path in folder.iterdir():
        match = re.fullmatch(r"(?P<stem>.+)_neg(?P<k>\d+)", path.stem)
        if match and path.suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(match["stem"], []).append((int(match["k"]), path.name))
    return {stem: [name for _, name in sorted(items)] for stem, items in found.items()}


def _read_sidecar(sidecar: Path, image_name: str, problems: list[str]) -> str | None:
    if sidecar.is_symlink():
        problems.append(f"{sidecar.name}: caption file is a symlink; copy the file in instead")
        return None
    if not sidecar.is_file():
        problems.append(f"{image_name}: no caption file {sidecar.name} beside it")
        return None
    try:
        text = sidecar.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        problems.append(f"{sidecar.name}: caption cannot be read as UTF-8 text ({error})")
        return None
    if not text:
        problems.append(f"{sidecar.name}: caption is empty")
        return None
    return text


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

    def reload(self) -> CCUBDataset:
        """The folder read and validated again with the same settings (e.g. after new negatives)."""
        return load_ccub(self.root, self.culture_terms, self.resolution, self.center_crop, self.random_flip)

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
        with Image.open(path) as image:
            rgb = image.convert("RGB")
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
) -> CCUBDataset:
    """Load and fully validate a CCUB folder (layout A if it has metadata.jsonl, else B).

    Raises DatasetError listing every problem; reads only, never writes.
    """
    root = Path(folder).expanduser().absolute()
    problems: list[str] = []
    if not root.is_dir():
        problems.append(f"{root}: dataset folder not found" if not root.exists() else f"{root}: not a folder")
        raise DatasetError(root, problems)
    with _strict_pillow():
        parsed = _parse_metadata(root, problems) if (root / METADATA_NAME).exists() else _scan_sidecars(root, problems)
    if problems:
        raise DatasetError(root, problems)
    records, derived = [], 0
    for record, needs_generic in parsed:
        if needs_generic:
            derived += 1
            record = CCUBRecord(
                record.image, record.text, generic_caption(record.text, culture_terms), record.negatives, record.source
            )
        records.append(record)
    if derived:
        logger.info(
            "CCUB %s: derived %d of %d generic captions from 'text' by removing culture terms (no blip_text given)",
            root, derived, len(records),
        )
    return CCUBDataset(root, records, derived, resolution, center_crop, random_flip, culture_terms)
