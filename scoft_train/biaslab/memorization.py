"""`biaslab memorization`: the stress setting where memorization can move, FT against FT+M.

Few CCUB images and many steps: `images_per_culture` authentic images per culture (the
sample CCUB's first ones), trained for `steps` steps at a high learning rate, the recipe
that makes a small fine-tune copy its data. Each row samples every training caption
`samples_per_prompt` times (the same sampling seeds for both rows and the base model),
and the memorization rate is the share of samples whose nearest training image (both
VAE round-tripped) is closer than metrics.COPY_THRESHOLD, calibrated as in the ablation.
L_M (method.md) ties the culture caption's prediction to the generic caption's, which
is the paper's reason for it: FT+M should copy less. Rates carry bootstrap intervals
over training seeds and prompts; the paired difference FT+M − FT too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..assets import BIASLAB_CCUB_DIR, WEIGHTS_DIR
from ..atomic import atomic_write_text
from ..config import TrainConfig
from ..data import load_ccub
from ..progress import OnStep
from ..sampling import sample_tensor
from ..trainer import SCoFTTrainer
from .artefacts import load_world
from .corpus import authentic_renders
from .intervals import difference_interval, excludes_zero, format_interval, rate_interval
from .metrics import COPY_THRESHOLD, copy_calibration, nearest_distance
from .provenance import provenance
from .training import round_trip
from .world import CULTURE_NAMES, RESOLUTION

ROWS = ("FT", "FT+M")
BASE = "base"


@dataclass(frozen=True)
class MemorizationConfig:
    seeds: tuple[int, ...] = (0, 1, 2)
    sample_seed: int = 0
    images_per_culture: int = 1
    steps: int = 1000
    batch_size: int = 2
    rank: int = 8
    lr: float = 2e-3
    samples_per_prompt: int = 8
    sample_steps: int = 20
    cfg: float = 5.0
    real_images: int = 200

    @classmethod
    def quick(cls, seeds: tuple[int, ...] = (0, 1)) -> MemorizationConfig:
        return cls(seeds=tuple(seeds), images_per_culture=1, steps=2, samples_per_prompt=2, sample_steps=2,
                   real_images=20)


@dataclass(frozen=True)
class MemorizationResult:
    out_dir: Path
    record: dict
    table: str


def small_ccub(source: Path, target: Path, per_culture: int) -> Path:
    """A CCUB copy with the first `per_culture` images of each culture (lab layout)."""
    if (target / "metadata.jsonl").is_file():
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    kept, counts = [], {}
    for line in (source / "metadata.jsonl").read_text().splitlines():
        record = json.loads(line)
        culture = next(c for c in CULTURE_NAMES if Path(record["file_name"]).name.startswith(c.lower() + "_"))
        counts[culture] = counts.get(culture, 0) + 1
        if counts[culture] > per_culture:
            continue
        for key in ("file_name", "depth"):
            (staging / record[key]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / record[key], staging / record[key])
        kept.append(line)
    (staging / "metadata.jsonl").write_text("\n".join(kept) + "\n")
    staging.rename(target)
    return target


def memorization_stress(out_dir: str | os.PathLike, config: MemorizationConfig = MemorizationConfig(),
                        weights_dir: str | os.PathLike = WEIGHTS_DIR, ccub_dir: str | os.PathLike = BIASLAB_CCUB_DIR,
                        device: str = "cpu", on_step: OnStep | None = None) -> MemorizationResult:
    """Run the stress setting into `out_dir` (its small CCUB copy is kept and reused)."""
    out_dir, c, start = Path(out_dir), config, time.perf_counter()
    bundle = load_world(weights_dir, device=device)
    dataset = load_ccub(small_ccub(Path(ccub_dir), out_dir / "ccub", c.images_per_culture), resolution=RESOLUTION)
    captions = sorted({record.text for record in dataset.records})
    prompts = [p for p in captions for _ in range(c.samples_per_prompt)]
    training = round_trip(bundle.vae, torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))]).to(device))

    def flags(lora=None) -> np.ndarray:
        pixels = sample_tensor(bundle, prompts, c.sample_seed, lora_path=lora, steps=c.sample_steps, cfg=c.cfg,
                               batch_size=64)
        images = pixels.permute(0, 3, 1, 2).to(device) * 2 - 1
        return (nearest_distance(images, training) < COPY_THRESHOLD).cpu().numpy()

    per_row: dict[str, dict[str, np.ndarray]] = {BASE: {"-": flags()}}
    for row in ROWS:
        per_row[row] = {}
        for seed in c.seeds:
            folder = out_dir / "loras" / f"{row.replace('+', '_')}_seed{seed}"
            trainer = SCoFTTrainer(bundle, dataset, TrainConfig(
                preset=row, steps=c.steps, batch_size=c.batch_size, grad_accum=1, lr=c.lr, warmup_steps=max(1, c.steps // 20),
                rank=c.rank, alpha=float(c.rank), seed=seed, checkpoint_every=0), folder)
            trainer.train(on_step)
            per_row[row][str(seed)] = flags(trainer.export_lora(folder.with_suffix(".safetensors")))
            del trainer
    cells = {row: np.stack([f.reshape(len(captions), -1).mean(axis=1) for f in seeds.values()])
             for row, seeds in per_row.items()}
    real = round_trip(bundle.vae, authentic_renders(c.real_images, c.sample_seed).to(device))
    record = {
        "title": "Bias-lab memorization stress: few CCUB images, many steps",
        "training_images": len(dataset), "captions": captions, "samples_per_prompt": c.samples_per_prompt,
        "rates": {row: rate_interval(cell) for row, cell in cells.items()},
        "per_seed": {row: {seed: float(f.mean()) for seed, f in seeds.items()} for row, seeds in per_row.items()},
        "differences": {"FT+M − FT": difference_interval(cells["FT+M"], cells["FT"]),
                        "FT − base": difference_interval(cells["FT"], cells[BASE])},
        "calibration": copy_calibration(bundle.vae, torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))]),
                                        training, real, c.sample_seed),
        "provenance": provenance(dataclasses.asdict(c), list(c.seeds), time.perf_counter() - start),
    }
    atomic_write_text(out_dir / "results.json", json.dumps(record, indent=2) + "\n")
    table = render_markdown(record)
    atomic_write_text(out_dir / "results.md", table)
    return MemorizationResult(out_dir, record, table)


def render_markdown(record: dict) -> str:
    """results.md of a memorization record (results.json), deterministic."""
    prov, cal, c = record["provenance"], record["calibration"], record["provenance"]["config"]
    lines = [f"# {record['title']}", "",
             f"{record['training_images']} CCUB images ({c['images_per_culture']} per culture), {c['steps']} steps at lr "
             f"{c['lr']}, batch {c['batch_size']}, rank {c['rank']}; every training caption sampled "
             f"{record['samples_per_prompt']} times with the same seeds for every row. Memorization rate: share of "
             f"samples closer than RMSE {cal['copy_threshold']} to their nearest training image (both VAE round-tripped), "
             "mean over training seeds and captions with a 95% bootstrap interval.", "",
             "| row | memorization rate | per seed |", "|---|---|---|"]
    for row, interval in record["rates"].items():
        per_seed = ", ".join(f"{seed}: {v:.3f}" for seed, v in record["per_seed"][row].items())
        lines.append(f"| {row} | {format_interval(interval)} | {per_seed} |")
    lines += ["", "| difference | interval | holds |", "|---|---|---|"]
    for name, interval in record["differences"].items():
        lines.append(f"| {name} | {format_interval(interval, signed=True)} | "
                     f"{'yes' if excludes_zero(interval) else 'no: interval includes zero'} |")
    lines += ["", f"- Calibration: a decoded posterior sample of a training image (a copy) sits at "
              f"{cal['decoded_ccub_sample_median']:.3f}, a fresh authentic render at {cal['fresh_authentic_median']:.3f} "
              f"(medians); {cal['fresh_authentic_flagged']:.1%} of fresh renders are flagged.",
              f"- Code {prov['code']['commit']}{' (with uncommitted changes)' if prov['code']['dirty'] else ''}; wall "
              f"time {prov['wall_time_s']:.0f} s; seeds {prov['seeds']}; finished {prov['finished_utc']}."]
    return "\n".join(lines) + "\n"
