"""Reading `.safetensors` weight files that come from elsewhere, with errors that name the file.

A half-downloaded or damaged file makes safetensors raise a bare `SafetensorError`
("incomplete metadata", "header too large", ...) that never says which file; here it
becomes one `DamagedFileError` (a ValueError) naming the file, what is wrong and what to do.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open


class DamagedFileError(ValueError):
    """A weight file that is truncated or corrupt; `path` is the file."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


@contextlib.contextmanager
def _open(path: Path, what: str, fix: str) -> Iterator:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except (SafetensorError, OSError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DamagedFileError(
            f"{what} {path} ({path.stat().st_size} bytes) is truncated or corrupt and cannot be read as "
            f"safetensors ({reason}); {fix}",
            path,
        ) from None


def read_safetensors(
    path: str | os.PathLike, what: str = "weight file", fix: str = "download or export it again"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of a `.safetensors` file; a missing, truncated or corrupt
    file raises FileNotFoundError / DamagedFileError naming it. `what`: how messages call
    it; `fix`: what the message tells the user to do."""
    with _open(Path(path), what, fix) as handle:
        header = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return tensors, header


def read_safetensors_header(
    path: str | os.PathLike, what: str = "weight file", fix: str = "download or export it again"
) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """({key: shape}, header metadata) of a `.safetensors` file, reading no tensor data;
    errors as in `read_safetensors` (a file shorter than its header claims is refused)."""
    with _open(Path(path), what, fix) as handle:
        header = dict(handle.metadata() or {})
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    return shapes, header
