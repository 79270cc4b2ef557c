"""Reading `.safetensors` weight files that come from elsewhere, with errors that name the file.

A half-downloaded or damaged file makes safetensors raise a bare `SafetensorError`
("incomplete metadata", "header too large", ...) that never says which file; here it
becomes one ValueError naming the file, what is wrong and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open


def read_safetensors(path: str | os.PathLike, what: str = "weight file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of a `.safetensors` file; a missing, truncated or corrupt
    file raises FileNotFoundError / ValueError naming it. `what`: how messages call it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, RuntimeError) as error:
        raise ValueError(
            f"{what} {path} ({path.stat().st_size} bytes) is truncated or corrupt and cannot be read as "
            f"safetensors ({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
            "download or export it again"
        ) from None
    return tensors, header
