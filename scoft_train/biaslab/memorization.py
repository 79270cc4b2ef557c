"""`biaslab memorization`: the stress setting where memorization can move, FT against FT+M.

Few CCUB images and many steps: `images_per_culture` authentic images per culture (the
sample CCUB's first ones), trained for `steps` steps at a high learning rate, the recipe
that makes a small fine-tune copy its data. Each row samples every training caption
`samples_per_prompt` times (the same sampling seeds for both rows and the base model),
and each sample's distance to its nearest training image (both VAE round-tripped) is
read against two thresholds:
- copy: metrics.COPY_THRESHOLD, as in the ablation (a decoded copy of a training image
  sits below it);
- near copy: the distance below which only `null_share` of the null falls. The null is
  `null_per_image` fresh authentic renders of each training image's own cell (culture,
  concept, lighting), which the world draws without copying anything, so a sample
  flagged here is closer to a training image than the world's own redraws of that cell
  nearly ever are. The threshold is set by the null alone, before any LoRA is sampled.
The mean nearest distance is reported too. L_M (method.md) ties the culture caption's
prediction to the generic caption's, which is the paper's reason for it: FT+M should copy
less. Rates carry bootstrap intervals over training seeds and prompts; the paired
differences FT+M − FT and FT − base too.
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
from .corpus import authentic_renders, cell_renders
from .intervals import difference_interval, excludes_zero, format_interval, rate_interval
from .metrics import COPY_THRESHOLD, copy_calibration, nearest_distance
from .provenance import provenance
from .training import round_trip
from .world import CONCEPTS, CULTURE_NAMES, RESOLUTION

ROWS = ("FT", "FT+M")
BASE = "base"
READINGS = {"copy": "copy rate", "near_copy": "near-copy rate", "distance": "mean nearest distance"}


@dataclass(frozen=True)
class MemorizationConfig:
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    sample_seed: int = 0
    images_per_culture: int = 1
    steps: int = 1000
    batch_size: int = 2
    rank: int = 32
    lr: float = 2e-3
    samples_per_prompt: int = 16
    sample_steps: int = 20
    cfg: float = 5.0
    real_images: int = 200
    null_per_image: int = 40
    null_share: float = 0.01

    @classmethod
    def quick(cls, seeds: tuple[int, ...] = (0, 1)) -> MemorizationConfig:
        return cls(seeds=tuple(seeds), images_per_culture=1, steps=2, samples_per_prompt=2, sample_steps=2,
                   real_images=20, null_per_image=4)


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


def training_cells(dataset) -> list[tuple[str, str, bool]]:
    """(concept, culture, dusk) of each record of a lab-layout CCUB (images/<culture>_<concept>_<i>.png)."""
    cells, names = [], {name.lower(): name for name in CULTURE_NAMES}
    for record in dataset.records:
        culture, concept = (record.image.stem.split("_") + ["", ""])[:2]
        if culture not in names or concept not in CONCEPTS:
            raise ValueError(f"{record.image}: not a bias-lab CCUB image (expected images/<culture>_<concept>_<i>.png "
                             f"with a culture of {CULTURE_NAMES} and a concept of {CONCEPTS})")
        cells.append((concept, names[culture], record.text.endswith(" at dusk")))
    return cells


def near_copy_threshold(null_distances: torch.Tensor, share: float) -> float:
    """The distance below which at most `share` of `null_distances` [N] fall."""
    ordered = null_distances.sort().values
    return float(ordered[int(share * len(ordered))])


def memorization_stress(out_dir: str | os.PathLike, config: MemorizationConfig = MemorizationConfig(),
                        weights_dir: str | os.PathLike = WEIGHTS_DIR, ccub_dir: str | os.PathLike = BIASLAB_CCUB_DIR,
                        device: str = "cpu", on_step: OnStep | None = None) -> MemorizationResult:
    """Run the stress setting into `out_dir` (its small CCUB copy is kept and reused)."""
    out_dir, c, start = Path(out_dir), config, time.perf_counter()
    bundle = load_world(weights_dir, device=device)
    dataset = load_ccub(small_ccub(Path(ccub_dir), out_dir / "ccub", c.images_per_culture), resolution=RESOLUTION)
    captions = sorted({record.text for record in dataset.records})
    prompts = [p for p in captions for _ in range(c.samples_per_prompt)]
    ccub_pixels = torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))]).to(device)
    training = round_trip(bundle.vae, ccub_pixels)

    null = round_trip(bundle.vae, cell_renders(training_cells(dataset), c.null_per_image, c.sample_seed).to(device))
    null_distances = nearest_distance(null, training)
    threshold = near_copy_threshold(null_distances, c.null_share)

    def distances(lora=None) -> np.ndarray:
        pixels = sample_tensor(bundle, prompts, c.sample_seed, lora_path=lora, steps=c.sample_steps, cfg=c.cfg,
                               batch_size=64)
        return nearest_distance(pixels.permute(0, 3, 1, 2).to(device) * 2 - 1, training).cpu().numpy()

    per_row: dict[str, dict[str, np.ndarray]] = {BASE: {"-": distances()}}
    for row in ROWS:
        per_row[row] = {}
        for seed in c.seeds:
            folder = out_dir / "loras" / f"{row.replace('+', '_')}_seed{seed}"
            trainer = SCoFTTrainer(bundle, dataset, TrainConfig(
                preset=row, steps=c.steps, batch_size=c.batch_size, grad_accum=1, lr=c.lr, warmup_steps=max(1, c.steps // 20),
                rank=c.rank, alpha=float(c.rank), seed=seed, checkpoint_every=0), folder)
            trainer.train(on_step)
            per_row[row][str(seed)] = distances(trainer.export_lora(folder.with_suffix(".safetensors")))
            del trainer
    readings = {"copy": lambda d: d < COPY_THRESHOLD, "near_copy": lambda d: d < threshold, "distance": lambda d: d}
    cells = {reading: {row: np.stack([read(d).astype(float).reshape(len(captions), -1).mean(axis=1) for d in seeds.values()])
                       for row, seeds in per_row.items()} for reading, read in readings.items()}
    real = round_trip(bundle.vae, authentic_renders(c.real_images, c.sample_seed).to(device))
    calibration = copy_calibration(bundle.vae, ccub_pixels, training, real, c.sample_seed)
    calibration.update({"near_copy_threshold": threshold, "null_renders": len(null_distances),
                        "null_median": float(null_distances.median()), "null_min": float(null_distances.min())})
    record = {
        "title": "Bias-lab memorization stress: few CCUB images, many steps",
        "training_images": len(dataset), "captions": captions, "samples_per_prompt": c.samples_per_prompt,
        "readings": {reading: {
            "rates": {row: rate_interval(cell) for row, cell in by_row.items()},
            "per_seed": {row: {seed: float(cell.mean()) for seed, cell in zip(per_row[row], by_row[row])}
                         for row in by_row},
            "differences": {"FT+M − FT": difference_interval(by_row["FT+M"], by_row["FT"]),
                            "FT − base": difference_interval(by_row["FT"], by_row[BASE])},
        } for reading, by_row in cells.items()},
        "calibration": calibration,
        "sample_distances": {row: {seed: [round(float(v), 5) for v in d] for seed, d in seeds.items()}
                             for row, seeds in per_row.items()},
        "provenance": provenance(dataclasses.asdict(c), list(c.seeds), time.perf_counter() - start),
    }
    atomic_write_text(out_dir / "results.json", json.dumps(record, indent=2) + "\n")
    table = render_markdown(record)
    atomic_write_text(out_dir / "results.md", table)
    return MemorizationResult(out_dir, record, table)


def render_markdown(record: dict) -> str:
    """results.md of a memorization record (results.json), deterministic."""
    prov, cal, c = record["provenance"], record["calibration"], record["provenance"]["config"]
    readings = record["readings"]
    lines = [f"# {record['title']}", "",
             f"{record['training_images']} CCUB images ({c['images_per_culture']} per culture), {c['steps']} steps at lr "
             f"{c['lr']}, batch {c['batch_size']}, rank {c['rank']}; every training caption sampled "
             f"{record['samples_per_prompt']} times with the same seeds for every row. Each sample's distance is the RMSE "
             "(0..1 units) to its nearest training image, both VAE round-tripped. Copy: closer than "
             f"{cal['copy_threshold']} (the ablation's threshold). Near copy: closer than {cal['near_copy_threshold']:.3f}, "
             f"the distance only {c['null_share']:.0%} of {cal['null_renders']} fresh authentic renders of the training "
             "images' own cells fall below (set by those renders alone). Means over training seeds and captions with a "
             "95% bootstrap interval.", "",
             "| row | " + " | ".join(READINGS.values()) + " | near-copy rate per seed |",
             "|---|" + "---|" * (len(READINGS) + 1)]
    for row in readings["copy"]["rates"]:
        cells = " | ".join(format_interval(readings[r]["rates"][row], digits=3) for r in READINGS)
        per_seed = ", ".join(f"{seed}: {v:.3f}" for seed, v in readings["near_copy"]["per_seed"][row].items())
        lines.append(f"| {row} | {cells} | {per_seed} |")
    lines += ["", "| reading | difference | interval | holds |", "|---|---|---|---|"]
    for reading, name in READINGS.items():
        for difference, interval in readings[reading]["differences"].items():
            lines.append(f"| {name} | {difference} | {format_interval(interval, signed=True, digits=3)} | "
                         f"{'yes' if excludes_zero(interval) else 'no: interval includes zero'} |")
    lines += ["", f"- Calibration: a decoded posterior sample of a training image (a copy) sits at "
              f"{cal['decoded_ccub_sample_median']:.3f}; fresh renders of the training images' cells at a median of "
              f"{cal['null_median']:.3f} (nearest {cal['null_min']:.3f}); fresh authentic renders of every cell at "
              f"{cal['fresh_authentic_median']:.3f}, of which {cal['fresh_authentic_flagged']:.1%} fall below the copy "
              "threshold. Per-sample distances are in results.json (sample_distances).",
              f"- Code {prov['code']['commit']}{' (with uncommitted changes)' if prov['code']['dirty'] else ''}; wall "
              f"time {prov['wall_time_s']:.0f} s; seeds {prov['seeds']}; finished {prov['finished_utc']}."]
    return "\n".join(lines) + "\n"
