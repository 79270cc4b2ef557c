"""Provenance of a shipped result: the code commit it ran from, its full config, its seeds,
its wall time, the command and the environment. Every results.json of the lab carries one
under "provenance"."""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def code_commit(root: Path = REPO_ROOT) -> dict:
    """{"commit": HEAD's hash, "dirty": uncommitted changes under scoft_train/}, or
    commit "unknown" outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "scoft_train"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown (not a git checkout)", "dirty": None}


def provenance(config: dict, seeds: list[int], wall_time_s: float) -> dict:
    """The record every lab results file carries."""
    import diffusers

    return {
        "code": code_commit(),
        "config": config,
        "seeds": list(seeds),
        "wall_time_s": round(wall_time_s, 1),
        "command": " ".join(["python -m scoft_train", *sys.argv[1:]]) if sys.argv and sys.argv[0] else "",
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "diffusers": diffusers.__version__, "threads": torch.get_num_threads(),
                        "machine": platform.machine()},
    }
