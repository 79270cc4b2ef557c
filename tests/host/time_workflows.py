"""Wall time of every shipped API workflow, end to end, as a user runs it: a real ComfyUI (CPU)
with this checkout as a custom node, each workflow queued with its shipped settings through the
bundled headless client, one at a time, each on a fresh server (so no cached node output is reused).
They run in ORDER, and the LoRAs one writes (models/loras) are copied into the next server's copy, as
a user's ComfyUI keeps them: sample_compare samples the LoRA scoft_finetune_compare trained.

    .venv/bin/python -m tests.host.time_workflows [--limit 600] [--json outputs/workflow_times.json]

Prints one row per workflow (seconds, exit code) and exits 1 if any failed or took longer than
--limit seconds. Run it on an otherwise idle machine: the figures are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scoft_train.atomic import atomic_write_text

from .helpers import REPO_ROOT, start_comfy_host, stop_comfy_host

API = REPO_ROOT / "workflows" / "api"
ORDER = ("scoft_finetune_compare", "sample_compare", "rs_corrector_compare", "sfsl_spurious")


def time_workflow(path: Path, workdir: Path, loras: Path) -> dict:
    """Start a fresh server in `workdir` with the LoRAs in `loras`, run `path` through the client, copy
    the server's LoRAs back into `loras`, return the timing record."""
    host = start_comfy_host(workdir)
    models = host.root / "models" / "loras"
    try:
        shutil.copytree(loras, models, dirs_exist_ok=True)
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "scoft_train.client", "run", str(path), "--server", host.url,
             "--out", str(workdir / "client_out"), "-q"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=False,
        )
        seconds = time.perf_counter() - start
        shutil.copytree(models, loras, dirs_exist_ok=True)
    finally:
        stop_comfy_host(host)
    return {"workflow": path.name, "seconds": round(seconds, 1), "exit_code": result.returncode,
            "outputs": len(result.stdout.splitlines()), "stderr_tail": result.stderr[-800:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=float, default=600.0, help="seconds each workflow may take (default 600)")
    parser.add_argument("--json", type=Path, help="also write the records here")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"workflows to time, run in the order {', '.join(ORDER)} (default: all)")
    args = parser.parse_args(argv)
    if sorted(ORDER) != sorted(p.stem for p in API.glob("*.json")):
        parser.error(f"ORDER {ORDER} does not list exactly the workflows in {API}")
    unknown = sorted(set(args.names) - set(ORDER))
    if unknown:
        parser.error(f"unknown workflows {unknown}; choose from {ORDER}")
    records = []
    with tempfile.TemporaryDirectory(prefix="scoft-time-") as tmp:
        loras = Path(tmp) / "loras"
        loras.mkdir()
        for name in (n for n in ORDER if not args.names or n in args.names):
            record = time_workflow(API / f"{name}.json", Path(tmp) / name, loras)
            record["within_limit"] = record["exit_code"] == 0 and record["seconds"] <= args.limit
            records.append(record)
            print(f"{record['workflow']:32s} {record['seconds']:8.1f} s  exit {record['exit_code']}  "
                  f"{'ok' if record['within_limit'] else 'OVER LIMIT OR FAILED'}", flush=True)
            if record["exit_code"] != 0:
                print(record["stderr_tail"], file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {"limit_s": args.limit, "cpus": os.cpu_count(), "machine": platform.machine(),
                   "load_average_at_end": os.getloadavg(), "workflows": records}
        atomic_write_text(args.json, json.dumps(summary, indent=2) + "\n")
    return 0 if all(r["within_limit"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
