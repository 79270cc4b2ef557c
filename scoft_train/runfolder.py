"""A training output folder belongs to one run.

- Lock: while a run trains, `<folder>/.scoft-run.lock` holds its pid, host and start
  time, and a second run in that folder is refused, naming them. A lock left by a
  process that is gone (same host) is taken over, with a log line.
- A fresh run (one that does not resume) is refused in a folder that already holds
  checkpoints, naming the folder, the newest checkpoint and what differs: resume that
  run, pick another folder, or delete its checkpoints. This was chosen over giving the
  new run a subfolder: the LoRA, loss plot and checkpoints stay where the user asked for
  them, `resume` always means that one folder, and nothing of the old run is touched.
- Once the lock is held, temp files of atomic writes left by a killed process in the
  folder and its direct subfolders (checkpoints/, previews/) are removed
  (`atomic.remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from . import checkpoint as ckpt
from .atomic import remove_stale_temps

log = logging.getLogger(__name__)

LOCK_NAME = ".scoft-run.lock"
ELSEWHERE = "use another output folder (CLI --out, node run_name)"


class RunFolderError(ValueError):
    """The output folder is in use by a live run, or holds another run's checkpoints."""


@contextlib.contextmanager
def claim(folder: Path) -> Iterator[None]:
    """Hold `folder`'s run lock for the duration; first remove dead temp files in `folder`
    and its direct subfolders."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    _acquire(lock, record)
    try:
        for place in (folder, *(path for path in folder.iterdir() if path.is_dir())):
            remove_stale_temps(place)
        yield
    finally:
        if _read(lock) == record:
            lock.unlink(missing_ok=True)


def refuse_fresh_start(checkpoint_dir: Path, identity: ckpt.RunIdentity) -> None:
    """Refuse to start a run from step 0 where `checkpoint_dir` already holds checkpoints."""
    found = ckpt.list_checkpoints(checkpoint_dir)
    if not found:
        return
    newest = found[-1]
    try:
        differences = identity.differences(ckpt.read_identity(newest))
        what = (f"another run ({'; '.join(differences)})" if differences
                else "an earlier start of this same run (same settings, base model and dataset)")
    except ValueError as error:
        what = f"a run whose newest checkpoint cannot be read ({error})"
    raise RunFolderError(
        f"{checkpoint_dir.parent} already holds {len(found)} checkpoint(s) of {what}, newest {newest.name}. "
        f"A run folder belongs to one run: resume it (CLI --resume latest, node resume on), {ELSEWHERE}, "
        f"or delete {checkpoint_dir} to start afresh here"
    )


def _acquire(lock: Path, record: dict) -> None:
    for _ in range(2):
        if _create(lock, record):
            return
        holder = _read(lock)
        if holder is not None and _alive(holder):
            raise RunFolderError(
                f"{lock.parent} is in use by another training run ({_describe(holder)}); wait for it to finish "
                f"or {ELSEWHERE}. If that run is not alive, delete {lock}"
            )
        log.warning("taking over the run lock %s of a process that is gone (%s)", lock, _describe(holder))
        lock.unlink(missing_ok=True)
    raise RunFolderError(f"{lock.parent}: another run took its lock {lock} just now; {ELSEWHERE}")


def _create(lock: Path, record: dict) -> bool:
    """Create `lock` holding `record` in one step (link a complete file); False if it exists."""
    staged = lock.with_name(f"{lock.name}.{os.getpid()}.new")
    staged.write_text(json.dumps(record), encoding="utf-8")
    try:
        os.link(staged, lock)
        return True
    except FileExistsError:
        return False
    finally:
        staged.unlink(missing_ok=True)


def _read(lock: Path) -> dict | None:
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(lock.read_text(encoding="utf-8"))
        if isinstance(record, dict) and {"pid", "host", "started"} <= record.keys():
            return record
    return None


def _alive(holder: dict) -> bool:
    """Whether the lock's process still runs; another host's cannot be checked, so it counts as alive."""
    if holder["host"] != socket.gethostname():
        return True
    try:
        process = psutil.Process(int(holder["pid"]))
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        created = process.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    return created <= float(holder["started"]) + 1.0  # a later process reusing the pid is not the holder


def _describe(holder: dict | None) -> str:
    if holder is None:
        return "unreadable lock file"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder["started"])))
    return f"pid {holder['pid']} on {holder['host']}, started {started}"
