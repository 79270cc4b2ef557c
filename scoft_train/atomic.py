"""Atomic file writes: write a temp file beside the target, fsync, then rename.

A reader (or a crash at any moment) sees either the old file or the complete new one.
The temp file is `.<target name>.<8 random chars>.tmp` in the target's folder; one left
by a killed process is removed by `remove_stale_temps`. The result has the mode a plain
`open(path, "w")` would give: a new file follows the umask (0644 under umask 022), a
rewritten one keeps its previous mode. A full disk raises `DiskFullError`, naming the
file and the free space, with the temp file already removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

TEMP_PATTERN = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp$")
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DISK_FULL_TEXT = ("os error 28", "No space left on device", "Disk quota exceeded")


class DiskFullError(OSError):
    """No space left while writing a file (errno ENOSPC); the message names the file and the free space."""

    def __str__(self) -> str:
        return self.strerror


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success fsync it and rename over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        mode = _mode_for(target)
        yield tmp
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except Exception as error:
        if _is_disk_full(error):
            raise DiskFullError(errno.ENOSPC, _disk_full_message(target)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _mode_for(target: Path) -> int:
    """The permission bits `target` keeps (rewritten) or gets (new: 0666 minus the umask)."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (other threads may be
    creating files); elsewhere set and restored at once."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _is_disk_full(error: BaseException) -> bool:
    """ENOSPC/EDQUOT from Python, or safetensors' serialisation error that wraps os error 28."""
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        return True
    return type(error).__name__ == "SafetensorError" and any(text in str(error) for text in _DISK_FULL_TEXT)


def _disk_full_message(target: Path) -> str:
    free = shutil.disk_usage(target.parent).free
    return (
        f"no space left on the device while writing {target}: {_human(free)} free in {target.parent}; "
        "free some space (or write elsewhere) and run again"
    )


def _human(size: float) -> str:
    if size < 1024:
        return f"{int(size)} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            break
    return f"{size:.1f} {unit}"


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files of atomic writes that a killed process left in `folder` (not
    recursive); only call it while no other process writes there. Returns what it removed."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if TEMP_PATTERN.match(path.name) and path.is_file():
                log.info("removing %s (%s), a temp file left by an interrupted write", path, _human(path.stat().st_size))
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Save a flat {name: tensor} dict as .safetensors; metadata values must be strings."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def atomic_save_image(image, path: str | os.PathLike) -> None:
    """Save a PIL image; the format follows the target's suffix."""
    target = Path(path)
    with atomic_path(target) as tmp:
        image.save(tmp, format=target.suffix.lstrip(".").upper().replace("JPG", "JPEG"))
