"""What every SCoFT node shares: the custom types, progress, and host folder look-ups.

Custom types travel between nodes as typed Python objects:
    SCOFT_MODEL    scoft_train.models.ModelBundle (cached by the loader; never mutated)
    SCOFT_DATASET  scoft_train.data.CCUBDataset
    SCOFT_LORA     LoraFile below (a kohya-format .safetensors on disk)

File inputs are confined to ComfyUI's registered folders (see "folders" below): a
dataset folder must lie in a `ccub` root or ComfyUI's input folder, weights in their
model-folder kind. Anything else is refused unless the environment variable
SCOFT_ALLOW_ANY_PATH=1 is set (a single-user local install that wants free paths).

ComfyUI modules (`folder_paths`, `comfy.*`) are imported inside functions only, so
this package also imports outside ComfyUI (e.g. under pytest).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from ..scoft_train.lora import read_lora_metadata
from ..scoft_train.paths import PathOutsideRoots, resolve_inside

logger = logging.getLogger(__name__)

SCOFT_MODEL = "SCOFT_MODEL"
SCOFT_DATASET = "SCOFT_DATASET"
SCOFT_LORA = "SCOFT_LORA"
SEED_MAX = 0xFFFFFFFF
SAMPLE = "sample"  # folder inputs: a working copy of data shipped with the engine


@dataclass(frozen=True)
class LoraFile:
    """A kohya-format LoRA file: its path, rank, alpha and header metadata."""

    path: Path
    rank: int
    alpha: float
    metadata: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> LoraFile:
        """Rank and alpha from the kohya header fields, else from the first lora_down tensor."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"LoRA file {path} does not exist")
        metadata = read_lora_metadata(path)
        rank, alpha = metadata.get("ss_network_dim"), metadata.get("ss_network_alpha")
        if rank is None or alpha is None:
            with safe_open(str(path), framework="pt") as handle:
                down = next((key for key in handle.keys() if key.endswith(".lora_down.weight")), None)
                if down is None:
                    raise ValueError(
                        f"{path} holds no kohya '.lora_down.weight' tensors; export it with "
                        "scoft_train.lora.export_kohya or pick a kohya-format LoRA"
                    )
                rank = rank or handle.get_slice(down).get_shape()[0]
                alpha_key = down.replace(".lora_down.weight", ".alpha")
                alpha = alpha or (float(handle.get_tensor(alpha_key)) if alpha_key in handle.keys() else rank)
        return cls(path=path, rank=int(rank), alpha=float(alpha), metadata=metadata)

    def __str__(self) -> str:  # shown by ComfyUI in error reports
        return f"LoraFile({self.path.name}, rank {self.rank}, alpha {self.alpha:g})"


def tip(text: str, **options) -> dict:
    """Widget options with a tooltip (ComfyUI shows it on hover)."""
    return {"tooltip": text, **options}


def prompt_lines(text: str) -> list[str]:
    """One prompt per non-blank line, surrounding spaces removed."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def progress_callback(total: int):
    """An engine on_step(step, total, logs) that drives ComfyUI's progress bar and stops
    on the UI's cancel: the interrupt check raises, and the engine cleans up and re-raises."""
    import comfy.model_management
    import comfy.utils

    bar = comfy.utils.ProgressBar(total)

    def on_step(step: int, total: int, logs: dict) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(step, total)

    return on_step


def torch_device(name: str):
    """'auto' = the device ComfyUI computes on (CPU with --cpu), else the name as given."""
    import comfy.model_management

    return comfy.model_management.get_torch_device() if name == "auto" else name


def inside(folder: Path, path: Path) -> bool:
    """Whether `path` resolves to a place inside `folder` (scoft_train.paths.resolve_inside's check)."""
    try:
        resolve_inside(folder, path)
    except PathOutsideRoots:
        return False
    return True


# ------------------------------------------------------------------------------- folders
#
# Every file input of the suite names something inside one of ComfyUI's registered
# folder kinds; users add roots in extra_model_paths.yaml exactly as for checkpoints:
#
#     my_disk:
#         base_path: /data
#         ccub: datasets/ccub
#         annotators: models/annotators

ALLOW_ANY_PATH_ENV = "SCOFT_ALLOW_ANY_PATH"
CCUB_KIND = "ccub"  # dataset folders (CCUB folders, SFSL reference images)
ANNOTATORS_KIND = "annotators"  # depth-estimator weight files (controlnet_aux)
FEATURES_KIND = "feature_backbones"  # LPIPS trunks / vision backbones for L_P and L_C
CLASSIFIERS_KIND = "classifiers"  # SFSL classifier weights (ComfyUI already declares this kind)
NONE = "none"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
MODEL_FOLDER_MARKERS = ("config.json",)  # a folder holding a whole model (transformers, judge format)
_LIST_DEPTH = 3
_SKIP_DIRS = {"negatives", "depth", "images", "__pycache__"}


def _default_root(kind: str) -> Path:
    import folder_paths

    if kind == CCUB_KIND:
        return Path(folder_paths.get_input_directory()) / CCUB_KIND
    return Path(folder_paths.models_dir) / kind


def register_folders() -> bool:
    """Register our folder kinds with ComfyUI's folder registry (idempotent); False outside ComfyUI.

    Called when ComfyUI imports the package (the repo-root __init__.py) and again before
    each look-up, so a root moved later (e.g. --input-directory) is still covered. Roots
    that extra_model_paths.yaml gave a kind before us are kept; the default goes first.
    """
    try:
        import folder_paths
    except ImportError:
        return False
    for kind in (CCUB_KIND, ANNOTATORS_KIND, FEATURES_KIND, CLASSIFIERS_KIND):
        default = _default_root(kind)
        known = folder_paths.folder_names_and_paths.get(kind)
        if known is None or not any(Path(p).expanduser().resolve() == default.resolve() for p in known[0]):
            folder_paths.add_model_folder_path(kind, str(default))
            paths = folder_paths.folder_names_and_paths[kind][0]
            if isinstance(paths, list) and paths[-1] == str(default):
                paths.insert(0, paths.pop())  # the default first, as ComfyUI orders its own kinds
    try:
        _default_root(CCUB_KIND).mkdir(parents=True, exist_ok=True)  # so users see where datasets go
    except OSError as error:
        logger.warning("could not create the dataset folder %s: %s", _default_root(CCUB_KIND), error)
    return True


def folder_roots(kind: str) -> list[Path]:
    """The roots of a folder kind, in ComfyUI's order (default and extra_model_paths.yaml entries)."""
    import folder_paths

    register_folders()
    return [Path(p).expanduser() for p in folder_paths.get_folder_paths(kind)]


def dataset_roots() -> list[Path]:
    """Where dataset folders may lie: the `ccub` roots, then ComfyUI's input folder (older workflows
    named folders relative to it)."""
    import folder_paths

    return [*folder_roots(CCUB_KIND), Path(folder_paths.get_input_directory())]


def allow_any_path() -> bool:
    """The documented opt-in: SCOFT_ALLOW_ANY_PATH=1 (read at every call) lets file inputs take any path."""
    return os.environ.get(ALLOW_ANY_PATH_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def root_hint(kind: str) -> str:
    """How to make another folder reachable, for error messages."""
    return (
        f"Put it in one of those folders, or add a root for the folder kind '{kind}' to ComfyUI's "
        f"extra_model_paths.yaml (e.g. a line `{kind}: /path/to/folder` under a section, as for checkpoints) "
        f"and restart ComfyUI. A single-user local install may allow any path by starting ComfyUI with "
        f"{ALLOW_ANY_PATH_ENV}=1 (see the README)."
    )


def confined_path(input_name: str, value: str, roots: list[Path], kind: str) -> Path:
    """A file input resolved inside `roots` (symlinks followed), else a ValueError naming the input,
    the allowed folders and how to add one. With SCOFT_ALLOW_ANY_PATH=1 any path is taken as given
    (relative ones still under the first root where they exist)."""
    if allow_any_path():
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = next((root / path for root in roots if (root / path).exists()), roots[0] / path)
        return path.resolve()
    return resolve_inside(roots, Path(value).expanduser(), what=input_name, hint=root_hint(kind))


def _looks_like_dataset(folder: Path) -> bool:
    from ..scoft_train.sfsl.data import image_files

    return (folder / "metadata.jsonl").is_file() or bool(image_files(folder))


def _walk(root: Path, keep, depth: int = _LIST_DEPTH, prefix: str = ""):
    """Relative names (posix) under `root` for which keep(path, is_dir) is true; a kept folder is not
    entered. Hidden entries and entries that resolve outside `root` are skipped."""
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        name = f"{prefix}{entry.name}"
        try:
            resolve_inside(root, entry)
        except PathOutsideRoots:
            if not allow_any_path():
                continue
        try:
            is_dir = entry.is_dir()
            kept = keep(entry, is_dir)
        except OSError:  # unreadable entries are not offered
            continue
        if kept:
            yield name
        elif is_dir and depth > 1 and entry.name not in _SKIP_DIRS:
            yield from _walk(entry, keep, depth - 1, name + "/")


def _listing(roots: list[Path], keep) -> list[str]:
    names: list[str] = []
    for root in roots:
        if root.is_dir():
            names.extend(name for name in _walk(root, keep) if name not in names)
    return sorted(names, key=str.lower)


def dataset_choices() -> list[str]:
    """'sample', then every dataset folder (metadata.jsonl or images at its top) in the `ccub` roots."""
    return [SAMPLE, *_listing(folder_roots(CCUB_KIND), lambda path, is_dir: is_dir and _looks_like_dataset(path))]


def weight_choices(kind: str, suffixes: tuple[str, ...] = WEIGHT_SUFFIXES, folders: bool = True) -> list[str]:
    """Weight files (by suffix) and, if `folders`, model folders (with a config.json) in a kind's roots."""

    def keep(path: Path, is_dir: bool) -> bool:
        if is_dir:
            return folders and any((path / marker).is_file() for marker in MODEL_FOLDER_MARKERS)
        return path.suffix.lower() in suffixes

    return _listing(folder_roots(kind), keep)


def weight_folder_choices(kind: str) -> list[str]:
    """Sub-folders of a kind's roots that hold weight files directly (e.g. an annotator folder)."""

    def keep(path: Path, is_dir: bool) -> bool:
        return is_dir and any(child.suffix.lower() in WEIGHT_SUFFIXES for child in path.iterdir() if child.is_file())

    return _listing(folder_roots(kind), keep)


DATASET_WRITES = ("negatives", "metadata.jsonl", "metadata.jsonl.bak")  # what Generate SCoFT Negatives writes


def check_dataset_tree(root: Path, input_name: str, roots: list[Path]) -> None:
    """Refuse a dataset folder that reaches outside: a symlink in it that resolves outside the allowed
    roots (it would be read), or a write target (negatives/, metadata.jsonl, .bak) that resolves outside
    the dataset folder itself (negatives and metadata are written only under the dataset root)."""
    hint = root_hint(CCUB_KIND)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            entry = Path(dirpath) / name
            if entry.is_symlink():
                resolve_inside(roots, entry, what=f"{input_name}: {entry.relative_to(root)} (a symlink)", hint=hint)
    for name in DATASET_WRITES:
        if os.path.lexists(root / name):
            resolve_inside(root, root / name, what=f"{input_name}: {name}",
                           hint="Negatives and metadata are written only inside the dataset folder; remove that link")


def input_folder(text: str, sample, input_name: str = "folder") -> Path:
    """A dataset-folder input: '' or 'sample' = `sample(input dir)` (a working copy of shipped data made
    there on first use); otherwise a folder in a `ccub` root or in ComfyUI's input folder (names are
    looked up in that order), resolved with symlinks followed; anything outside is refused, and so is a
    folder whose own links lead outside (check_dataset_tree)."""
    import folder_paths

    text = (text or "").strip()
    if text in ("", SAMPLE):
        return sample(Path(folder_paths.get_input_directory()))
    roots = dataset_roots()
    path = confined_path(input_name, text, roots, CCUB_KIND)
    if not allow_any_path() and path.is_dir():
        check_dataset_tree(path, input_name, roots)
    return path


def check_folder(text, input_name: str = "folder") -> bool | str:
    """VALIDATE_INPUTS for a dataset-folder input: True, or the message saying what is wrong."""
    text = (text or "").strip() if isinstance(text, str) else text
    if text is None or text in ("", SAMPLE):
        return True  # None: the value comes from a link and is checked when the node runs
    try:
        path = input_folder(text, None, input_name)
    except ValueError as error:
        return str(error)
    if not path.is_dir():
        roots = ", ".join(str(root) for root in dataset_roots())
        return (f"{input_name} {text!r}: no such folder ({path}); put the dataset in one of {roots} "
                f"(the list shows the folders found in the '{CCUB_KIND}' roots) or pick '{SAMPLE}'")
    return True


def model_path(input_name: str, value: str, kind: str) -> Path:
    """A weights input (file or folder name from the kind's list) resolved inside the kind's roots."""
    return confined_path(input_name, value.strip(), folder_roots(kind), kind)


def check_model_path(input_name: str, value, kind: str, sentinels: tuple[str, ...] = ("", NONE)) -> bool | str:
    """VALIDATE_INPUTS for a weights input: True, or the message saying what is wrong."""
    if not isinstance(value, str) or value.strip() in sentinels:
        return True
    try:
        path = model_path(input_name, value, kind)
    except ValueError as error:
        return str(error)
    if not path.exists():
        roots = ", ".join(str(root) for root in folder_roots(kind))
        return f"{input_name} {value!r}: not found ({path}); put it in one of {roots} (the '{kind}' folders)"
    return True
