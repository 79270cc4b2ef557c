"""The CCUB dataset folder: the one reader, validator and metadata writer of its layouts.

Layout A (the public CCUB layout): `metadata.jsonl`, one JSON object a line with
`file_name`, `text`, optional `blip_text`, optional `negative_imgpath` (a list) and
optional `depth` (a path); paths relative to the folder, `/` or `\\` separated.

Layout B (no metadata.jsonl): every image in the folder or its subfolders is an example
with a sidecar caption `<stem>.txt` beside it. Subfolders only group files: a kohya-style
`10_hanok/` is read like any folder and its repeat count (10) is not applied (said once
in the log); every image is used once per pass. Stems must be unique across the folder,
since negatives are `negatives/<stem>_neg<k>.<ext>`; `<stem>_depth.<ext>` beside an image
is its depth map, not an example; the top-level `negatives/` holds negatives only.

Accepted and normalised: text files (captions, metadata.jsonl) as UTF-8 with or without
a BOM, LF or CRLF line ends; every image format Pillow decodes (`imagefile`), any suffix
case; names matched whatever their Unicode normalisation (NFC/NFD); hidden files and
folders (macOS `._*` AppleDouble companions, `.DS_Store`) ignored.

Validation decodes every image through `imagefile.read_rgb` before anything else runs,
collects every problem (file, line, field, what to do) and raises one `DatasetError`;
reading never writes. `notes` lists what is used differently than a user may expect
(captioned files left out and why, crops that drop most of an image). `MetadataFile`
rewrites metadata.jsonl atomically, keeping the pre-run version as `metadata.jsonl.bak`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath, PureWindowsPath

from .atomic import atomic_write_bytes
from .imagefile import (
    WHITE,
    Background,
    ImageFileError,
    is_image_name,
    read_rgb,
    unsupported_format,
)

logger = logging.getLogger(__name__)

METADATA_NAME = "metadata.jsonl"
NEGATIVES_DIR = "negatives"
DEPTH_SUFFIX = "_depth"
CAPTION_SUFFIX = ".txt"
BACKUP_SUFFIX = ".bak"
BOM = b"\xef\xbb\xbf"
CROP_WARNING = 0.5  # warn when training's square crop keeps less than this share of an image
_KOHYA_FOLDER = re.compile(r"(?P<repeats>\d+)_(?P<name>.+)")
_NEGATIVE_NAME = re.compile(r"(?P<stem>.+)_neg(?P<k>\d+)")


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
    path); `source` is "metadata.jsonl line N" or the caption file's relative path;
    `relpath` the image path relative to the root (posix); `line` its 1-based metadata
    line (None in layout B); `depth` the metadata's `depth` path, if given."""

    image: Path
    text: str
    generic_text: str
    negatives: tuple[Path, ...]
    source: str
    relpath: str = ""
    line: int | None = None
    depth: Path | None = None

    @property
    def stem(self) -> str:
        return PurePosixPath(self.relpath or self.image.name).stem


@dataclass
class FolderContents:
    """What `read_folder` found: records with "generic caption to derive" flags (in dataset
    order), notes for the user, and how many images had transparency."""

    root: Path
    entries: list[tuple[CCUBRecord, bool]]
    notes: list[str] = field(default_factory=list)
    transparent: int = 0
    images_read: int = 0


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _child(folder: Path, name: str) -> Path:
    """folder/name, or the one entry of `folder` whose name equals `name` after Unicode NFC
    normalisation (macOS writes NFD names, captions typed elsewhere are NFC)."""
    path = folder / name
    if path.exists() or path.is_symlink() or not folder.is_dir():
        return path
    matches = [entry for entry in folder.iterdir() if _nfc(entry.name) == _nfc(name)]
    return matches[0] if len(matches) == 1 else path


def _located(root: Path, raw: str) -> Path:
    """root joined with the relative path `raw` (either separator), matched component by
    component regardless of Unicode normalisation."""
    current = root
    for part in PurePosixPath(raw.replace("\\", "/")).parts:
        current = current / part if part in (".", "..") else _child(current, part)
    return current


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
        current = current / part if part in (".", "..") else _child(current, part)
        if current.is_symlink():
            return f"goes through a symlink ({current.relative_to(root).as_posix()}); copy the file in instead"
    return None


class _Reader:
    """One pass over a folder: problems and notes collected, every image decoded once."""

    def __init__(self, root: Path, background: Background, missing_negatives_ok: bool):
        self.root = root
        self.background = background
        self.missing_negatives_ok = missing_negatives_ok
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.transparent = 0
        self.images_read = 0

    def image(self, raw: str, where: str, what: str, positive: bool) -> Path | None:
        """Validate one referenced image; its absolute path when usable."""
        problem = _relative_problem(self.root, raw)
        path = _located(self.root, raw)
        if problem is None and not positive and self.missing_negatives_ok and not path.exists():
            return path
        if problem is None:
            problem = self._decode_problem(path, raw if positive else None, where)
        if problem is not None:
            self.problems.append(f"{where}: {what} '{raw}' {problem}")
            return None
        return path

    def _decode_problem(self, path: Path, crop_name: str | None, where: str) -> str | None:
        if not path.is_file():
            return f"not found at {path}" if not path.exists() else f"is not a regular file ({path})"
        try:
            _, facts = read_rgb(path, self.background)
        except ImageFileError as error:
            return str(error).removeprefix(f"{path}: ")
        self.images_read += 1
        self.transparent += facts.transparent
        width, height = facts.size
        kept = min(width, height) / max(width, height)
        if crop_name is not None and kept < CROP_WARNING:
            self.notes.append(
                f"{where}: image '{crop_name}' is {width}x{height}; training's square crop keeps {kept:.0%} of it "
                f"(a {min(width, height)} px square). Crop or split it if the rest matters"
            )
        return None

    def text_file(self, path: Path, what: str) -> str | None:
        """The stripped text of a caption file read as UTF-8 (BOM and CRLF accepted)."""
        name = path.relative_to(self.root).as_posix()
        if path.is_symlink():
            self.problems.append(f"{name}: {what} is a symlink; copy the file in instead")
            return None
        try:
            text = path.read_bytes().decode("utf-8-sig").replace("\r\n", "\n").strip()
        except OSError as error:
            self.problems.append(f"{name}: {what} cannot be read ({error})")
            return None
        except UnicodeDecodeError as error:
            self.problems.append(
                f"{name}: {what} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); "
                "save it as UTF-8"
            )
            return None
        if not text:
            self.problems.append(f"{name}: {what} is empty")
            return None
        return text


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def metadata_lines(data: bytes) -> list[bytes]:
    """metadata.jsonl bytes split into lines (LF or CRLF, a leading BOM dropped); the index
    of a line is its line number - 1, for reading and rewriting alike."""
    return [line.removesuffix(b"\r") for line in data.removeprefix(BOM).split(b"\n")]


def _parse_metadata(reader: _Reader) -> list[tuple[CCUBRecord, bool]]:
    """Layout A: records (with "generic to derive" flags) from metadata.jsonl."""
    try:
        raw_lines = metadata_lines((reader.root / METADATA_NAME).read_bytes())
    except OSError as error:
        reader.problems.append(f"{METADATA_NAME}: cannot be read ({error})")
        return []
    entries, seen = [], {}
    for number, raw in enumerate(raw_lines, start=1):
        where = f"{METADATA_NAME} line {number}"
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            reader.problems.append(
                f"{where}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1}); "
                f"save {METADATA_NAME} as UTF-8"
            )
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            reader.problems.append(f"{where}: not valid JSON ({error})")
            continue
        if not isinstance(entry, dict):
            reader.problems.append(f"{where}: expected a JSON object, got {_type_name(entry)}")
            continue
        record = _metadata_record(reader, entry, number, seen)
        if record is not None:
            entries.append(record)
    if all(not line.strip() for line in raw_lines):
        reader.problems.append(f"{METADATA_NAME}: no entries; the dataset is empty")
    _note_unused_sidecars(reader, [record for record, _ in entries])
    return entries


def _metadata_record(
    reader: _Reader, entry: dict, number: int, seen: dict[str, str]
) -> tuple[CCUBRecord, bool] | None:
    problems, where = reader.problems, f"{METADATA_NAME} line {number}"
    before = len(problems)
    file_name, text = entry.get("file_name"), entry.get("text")
    blip, negatives, depth = entry.get("blip_text"), entry.get("negative_imgpath", []), entry.get("depth")
    image = None
    if not isinstance(file_name, str):
        problems.append(f"{where}: field 'file_name' must be a string, got {_type_name(file_name)}")
    else:
        key = _nfc(os.path.normpath(file_name.replace("\\", "/")))
        if key in seen:
            problems.append(f"{where}: duplicate entry for '{file_name}' (first at {seen[key]})")
        else:
            seen[key] = where
            image = reader.image(file_name, where, "image", positive=True)
    if not isinstance(text, str):
        problems.append(f"{where}: field 'text' must be a string, got {_type_name(text)}")
    elif not text.strip():
        problems.append(f"{where}: field 'text' is empty")
    if blip is not None and not isinstance(blip, str):
        problems.append(f"{where}: field 'blip_text' must be a string or absent, got {_type_name(blip)}")
    if depth is not None and not isinstance(depth, str):
        problems.append(f"{where}: field 'depth' must be a path string or absent, got {_type_name(depth)}")
    elif isinstance(depth, str) and _relative_problem(reader.root, depth):
        problems.append(f"{where}: field 'depth' '{depth}' {_relative_problem(reader.root, depth)}")
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
        negative_paths.append(reader.image(raw, where, f"negative_imgpath[{k}]", positive=False))
    if len(problems) > before:
        return None
    derived = not (isinstance(blip, str) and blip.strip())
    relpath = image.relative_to(reader.root).as_posix()
    depth_path = _located(reader.root, depth) if isinstance(depth, str) else None
    record = CCUBRecord(
        image, text.strip(), "" if derived else blip.strip(), tuple(negative_paths), where, relpath, number, depth_path
    )
    return record, derived


def _note_unused_sidecars(reader: _Reader, records: list[CCUBRecord]) -> None:
    unused = [r.image.with_suffix(CAPTION_SUFFIX) for r in records if r.image.with_suffix(CAPTION_SUFFIX).is_file()]
    if unused:
        reader.notes.append(
            f"{len(unused)} caption file(s) beside listed images are not used, {METADATA_NAME} gives the captions "
            f"(e.g. {unused[0].relative_to(reader.root).as_posix()})"
        )


def _is_hidden(name: str) -> bool:
    """macOS `._*` companions, `.DS_Store` and any other dot-file or dot-folder."""
    return name.startswith(".")


def _sidecar_files(root: Path) -> list[Path]:
    """Every non-hidden file under root except the top-level negatives/, sorted by relative path."""
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d) and not (here == root and d == NEGATIVES_DIR))
        found.extend(here / name for name in files if not _is_hidden(name))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _scan_sidecars(reader: _Reader) -> list[tuple[CCUBRecord, bool]]:
    """Layout B: records from images with `<stem>.txt` sidecar captions (see module doc)."""
    root = reader.root
    files = _sidecar_files(root)
    images = [p for p in files if is_image_name(p.name) and not p.stem.endswith(DEPTH_SUFFIX)]
    for path in files:
        if unsupported_format(path) is not None:
            reader.problems.append(f"{path.relative_to(root).as_posix()}: {unsupported_format(path)}")
    _note_orphan_captions(reader, files, images)
    _note_kohya_folders(reader, images)
    if not images:
        if not reader.problems:
            reader.problems.append(f"no {METADATA_NAME} and no images in the folder; the dataset is empty")
        return []
    negatives = _scan_negatives(reader)
    entries, seen = [], {}
    for path in images:
        name = path.relative_to(root).as_posix()
        stem = _nfc(path.stem)
        if stem in seen:
            reader.problems.append(
                f"{name}: same file stem as {seen[stem]}; both would share negatives/{path.stem}_neg<k>, rename one"
            )
            continue
        seen[stem] = name
        image = reader.image(name, name, "image", positive=True)
        sidecar = _child(path.parent, path.stem + CAPTION_SUFFIX)
        if sidecar.is_file() or sidecar.is_symlink():
            text = reader.text_file(sidecar, "caption")
        else:
            reader.problems.append(f"{name}: no caption file {sidecar.name} beside it")
            text = None
        stem_negatives = tuple(
            reader.image(f"{NEGATIVES_DIR}/{file}", f"{NEGATIVES_DIR}/{file}", "negative", positive=False)
            for file in negatives.pop(stem, [])
        )
        if image is not None and text is not None and None not in stem_negatives:
            source = sidecar.relative_to(root).as_posix()
            entries.append((CCUBRecord(image, text, "", stem_negatives, source, name), True))
    for stem, names in negatives.items():
        logger.warning("%s/%s: no image with stem '%s'; negative ignored", NEGATIVES_DIR, names[0], stem)
    return entries


def _note_orphan_captions(reader: _Reader, files: list[Path], images: list[Path]) -> None:
    """A note for every caption file that captions no usable image, and why."""
    used = {(p.parent, _nfc(p.stem)) for p in images}
    by_stem: dict[tuple[Path, str], list[Path]] = {}
    for path in files:
        by_stem.setdefault((path.parent, _nfc(path.stem)), []).append(path)
    for path in files:
        key = (path.parent, _nfc(path.stem))
        if path.suffix.lower() != CAPTION_SUFFIX or key in used:
            continue
        name = path.relative_to(reader.root).as_posix()
        others = [p for p in by_stem[key] if p != path]
        if any(unsupported_format(p) for p in others):
            continue  # already refused by name
        if others:
            kinds = ", ".join(p.name for p in others)
            reader.notes.append(f"{name}: captions {kinds}, which is not an image format this reader decodes; not used")
        else:
            reader.notes.append(f"{name}: no image named {path.stem}.* beside it; caption not used")


def _note_kohya_folders(reader: _Reader, images: list[Path]) -> None:
    folders = sorted({p.parent for p in images if p.parent != reader.root})
    for folder in folders:
        match = _KOHYA_FOLDER.fullmatch(folder.name)
        if match:
            logger.info(
                "%s/: kohya-style repeat count %s is not applied; every image is used once per pass",
                folder.relative_to(reader.root).as_posix(), match["repeats"],
            )


def _scan_negatives(reader: _Reader) -> dict[str, list[str]]:
    """{NFC stem: [file names sorted by k]} from negatives/<stem>_neg<k>.<ext>."""
    folder = reader.root / NEGATIVES_DIR
    if folder.is_symlink():
        reader.problems.append(f"{NEGATIVES_DIR}/: is a symlink; copy the folder in instead")
        return {}
    if not folder.is_dir():
        return {}
    found: dict[str, list[tuple[int, str]]] = {}
    for path in folder.iterdir():
        match = _NEGATIVE_NAME.fullmatch(path.stem)
        if match and is_image_name(path.name) and not _is_hidden(path.name):
            found.setdefault(_nfc(match["stem"]), []).append((int(match["k"]), path.name))
    return {stem: [name for _, name in sorted(items)] for stem, items in found.items()}


def negative_order(path: Path) -> tuple[int, str]:
    """Sort key of a layout-B negative: (k, name)."""
    match = _NEGATIVE_NAME.fullmatch(path.stem)
    return (int(match["k"]) if match else -1, path.name)


def read_folder(
    folder: str | os.PathLike, background: Background = WHITE, missing_negatives_ok: bool = False
) -> FolderContents:
    """Read and fully validate a CCUB folder (layout A if it has metadata.jsonl, else B).

    `missing_negatives_ok`: a listed negative that does not exist is kept in its record
    rather than refused (for the negatives stage, which regenerates it).
    Raises DatasetError listing every problem; reads only, never writes.
    """
    root = Path(folder).expanduser().absolute()
    if not root.is_dir():
        raise DatasetError(root, [f"{root}: dataset folder not found" if not root.exists() else f"{root}: not a folder"])
    reader = _Reader(root, background, missing_negatives_ok)
    entries = _parse_metadata(reader) if (root / METADATA_NAME).exists() else _scan_sidecars(reader)
    if reader.problems:
        raise DatasetError(root, reader.problems)
    return FolderContents(root, entries, reader.notes, reader.transparent, reader.images_read)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files at the top of a plain image folder (any decodable format, hidden files
    skipped), sorted by name; HEIC and other undecodable photos are included so that their
    reader refuses them by name."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir()
        if p.is_file() and not _is_hidden(p.name) and (is_image_name(p.name) or unsupported_format(p))
    )


def with_negatives(record: CCUBRecord, paths: Sequence[Path]) -> CCUBRecord:
    """`record` with `paths` added to its negatives the way a re-read would list them:
    appended in layout A, ordered by k in layout B."""
    added = tuple(p for p in paths if p not in record.negatives)
    if not added:
        return record
    negatives = record.negatives + added
    if record.line is None:
        negatives = tuple(sorted(negatives, key=negative_order))
    return replace(record, negatives=negatives)


class MetadataFile:
    """metadata.jsonl kept as byte lines; rewritten atomically, with a .bak of the pre-run
    version. Untouched lines keep their bytes (BOM and CRLF included)."""

    def __init__(self, root: Path):
        self.path = root / METADATA_NAME
        self.original = self.path.read_bytes()
        self.bom = self.original.startswith(BOM)
        self.lines = self.original.removeprefix(BOM).split(b"\n")
        self.backed_up = False

    def list_negatives(self, line: int, relpaths: Sequence[str]) -> bool:
        """Append the missing `relpaths` to negative_imgpath of 1-based `line`; True if it changed."""
        raw = self.lines[line - 1]
        crlf = raw.endswith(b"\r")
        entry = json.loads(raw.removesuffix(b"\r").decode("utf-8"))
        listed = entry.get("negative_imgpath") or []
        known = {_nfc(p.replace("\\", "/")) for p in listed if isinstance(p, str)}
        missing = [p for p in relpaths if _nfc(p) not in known]
        if not missing:
            return False
        entry["negative_imgpath"] = listed + missing
        self.lines[line - 1] = json.dumps(entry, ensure_ascii=False).encode("utf-8") + (b"\r" if crlf else b"")
        return True

    def save(self) -> None:
        if not self.backed_up:
            atomic_write_bytes(self.path.with_name(METADATA_NAME + BACKUP_SUFFIX), self.original)
            self.backed_up = True
        atomic_write_bytes(self.path, (BOM if self.bom else b"") + b"\n".join(self.lines))
