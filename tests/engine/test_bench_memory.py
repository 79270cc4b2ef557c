"""`bench memory` on the tiny model: the same code path as the SD 1.5 run (each row a fresh
process, resident-set peak of one optimizer step); the table's structure, not its numbers."""

from __future__ import annotations

import re
import subprocess
import sys

from scoft_train.bench import MEMORY_COLUMNS, MEMORY_STEPS


def test_bench_memory_prints_one_row_per_step_and_checkpointing():
    result = subprocess.run([sys.executable, "-m", "scoft_train", "bench", "memory", "--tiny"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("bench memory (tiny SD-1.x model") and "64 px" in lines[0]
    assert "memory: VmHWM" in lines[1] or "memory: ru_maxrss" in lines[1]
    assert lines[2].split() == " ".join(MEMORY_COLUMNS).split()
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[3:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [(step, ckpt, "fp32") for step in MEMORY_STEPS for ckpt in ("off", "on")]
    for row in rows:
        before, peak, adds, seconds = map(float, row[3:])
        assert 0 < before <= peak and adds >= 0 and seconds > 0


def test_sd15_architecture_is_built_from_the_bundled_config():
    """The random SD 1.5 bundle's configs are SD 1.5's (checked on the configs, not by building it)."""
    import json

    from scoft_train.models import BUNDLED_CONFIGS

    folder = BUNDLED_CONFIGS["sd15"]
    unet = json.loads((folder / "unet" / "config.json").read_text())
    text = json.loads((folder / "text_encoder" / "config.json").read_text())
    assert unet["block_out_channels"] == [320, 640, 1280, 1280] and unet["cross_attention_dim"] == 768
    assert unet["attention_head_dim"] == 8 and unet["layers_per_block"] == 2 and unet["sample_size"] == 64
    assert text["vocab_size"] == 49408 and text["hidden_size"] == 768
