"""`biaslab ablate`: the paper's ablation over several training seeds, scored by scorers
that no training loss ever loads.

1. Copy the sample CCUB into the run folder, remove the held-out cells
   (prompt_sets.HELD_OUT_CELLS), generate K negatives per image with the world model and
   its depth ControlNet (the engine's negatives stage, ground-truth depth).
2. For every training seed, train one LoRA per row (ROWS): FT, FT+M, FT+MP and FT+MPC
   with L_P / L_C in the label-free encoder's feature space (`biaslab-ssl`), and FT+MPC
   in the development judge's feature space (the circular row, labelled so).
   `scorers.check_independent` refuses any other row whose loss reads a scorer.
3. Sample every test prompt (seen wordings, unseen wordings, held-out cells) with the
   same sampling seeds for every row and score every image with every scorer
   (scoring.py). Each (row, seed) unit is saved under units/ as it finishes, so a killed
   run resumes where it stopped.
   `biaslab branch` trains FT, FT+MPC and FT+MPC with cheaper decoded branches
   (BRANCH_ROWS: fewer denoising steps, rarer, rarer with scaled-up weights, without L_M)
   the same way: their cost and effect.
4. RS-Corrector (rs_rows.py): a sweep of its settings on validation prompts, then the
   best setting on the test prompts, one prior per training seed.
5. results.json (with provenance), results.md rendered from it (ablation_report.py),
   comparison.png and grids/<row>.png (training seed `seeds[0]`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..assets import BIASLAB_CCUB_DIR, WEIGHTS_DIR
from ..atomic import atomic_path, atomic_write_text
from ..config import LossWeights, TrainConfig
from ..data import load_ccub
from ..negatives import NegativeSettings, depth_from_dataset, generate_negatives
from ..plot import save_history_json
from ..progress import OnStep
from ..sampling import sample_tensor
from ..trainer import SCoFTTrainer
from .ablation_report import BASE, aggregate, render_markdown, write_images
from .artefacts import load_world, load_world_controlnet
from .corpus import authentic_renders
from .metrics import copy_calibration, diversity, kid, memorization_rate
from .prompt_sets import HELD_OUT_CELLS, evaluation_prompts, remove_cells
from .provenance import provenance
from .rs_rows import RS_ROW, rs_sweep, rs_test_samples
from .scorers import SSL, check_independent
from .scoring import Scorers, load_scorers
from .training import round_trip
from .world import RESOLUTION

log = logging.getLogger(__name__)

CIRCULAR = "FT+MPC (judge features)"
# row -> (preset, feature space of L_P / L_C)
ROWS = {
    "FT": ("FT", "biaslab-ssl"),
    "FT+M": ("FT+M", "biaslab-ssl"),
    "FT+MP": ("FT+MP", "biaslab-ssl"),
    "FT+MPC": ("FT+MPC", "biaslab-ssl"),
    CIRCULAR: ("FT+MPC", "biaslab-judge"),
}


class BranchRow(NamedTuple):
    """A cheaper decoded-generation branch of FT+MPC (label-free): S denoising steps, the branch every N
    steps, a factor on the L_P and L_C weights (a rarer branch with a larger factor keeps the branch's total
    weight over training), whether L_M (one no-grad UNet call per step) stays, and the branch's guidance
    scale (None: the lab's; at 1 each branch step calls the UNet on the caption alone)."""

    denoise_steps: int
    every: int
    factor: float = 1.0
    memorization: bool = True
    cfg: float | None = None


# the rows of `biaslab branch`; S = 1 is the one-step x0 estimate from z_t
BRANCH_ROWS = {
    "FT+MPC, S=4": BranchRow(4, 5),
    "FT+MPC, S=4, every 10": BranchRow(4, 10),
    "FT+MPC, S=1": BranchRow(1, 5),
    "FT+MPC, S=1, every 10": BranchRow(1, 10),
    "FT+MPC, S=1, every 20": BranchRow(1, 20),
    "FT+MPC, S=2": BranchRow(2, 5),
    "FT+MPC, S=4, every 10, L_P/L_C x2": BranchRow(4, 10, 2.0),
    "FT+MPC, S=4, every 20, L_P/L_C x4": BranchRow(4, 20, 4.0),
    "FT+PC, S=4 (no L_M)": BranchRow(4, 5, memorization=False),
    "FT+PC, S=4, cfg 1 (no L_M)": BranchRow(4, 5, memorization=False, cfg=1.0),
    "FT+PC, S=3 (no L_M)": BranchRow(3, 5, memorization=False),
}
# paired differences reported (minority stereotype rate): each loss added, the method against FT and base,
# each cheaper branch against FT and against FT+MPC (those whose rows ran)
DIFFERENCES = [("FT+MPC", "FT"), ("FT+MPC", BASE), ("FT", BASE), ("FT+M", "FT"), ("FT+MP", "FT+M"), ("FT+MPC", "FT+MP"),
               (CIRCULAR, "FT+MPC"), (RS_ROW, BASE),
               *((row, other) for row in BRANCH_ROWS for other in ("FT", "FT+MPC"))]


# AblateConfig fields that choose which units a run makes, not what a unit holds
PER_RUN_FIELDS = ("seeds", "rows", "rs_corrector")


@dataclass(frozen=True)
class AblateConfig:
    """Budgets of the ablation (defaults: the shipped run; `quick()`: CI)."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # LoRA training seeds (and RS-Corrector prior seeds)
    rows: tuple[str, ...] = tuple(ROWS)  # trained rows, from ROWS and BRANCH_ROWS
    rs_corrector: bool = True  # also the RS-Corrector sweep and its row
    sample_seed: int = 0  # sampling seeds, negatives and the RS-Corrector sweep: the same for every row
    steps: int = 400  # LoRA optimizer steps per row
    batch_size: int = 4
    rank: int = 8
    lr: float = 5e-4
    contrastive_every: int = 5
    denoise_steps: int = 10
    negatives_k: int = 2
    samples_per_prompt: int = 4  # x 80 test prompts
    sample_steps: int = 20
    cfg: float = 5.0
    real_images: int = 400  # held-out authentic renders (KID reference, round-tripped)
    rs_prior_steps: int = 300  # RS-Corrector prior: head updates
    rs_draws: int = 16  # noisy versions per training latent
    rs_batch_size: int = 64
    rs_max_timestep: int = 400
    rs_n_refs: int = 4  # reference latents per side (direct loss), drawn across cultures
    rs_last_k: tuple[int, ...] = (4, 10, 19)  # sweep: corrected denoising steps (the last K)
    rs_m_steps: tuple[int, ...] = (1, 3)  # sweep: gradient steps per corrected step
    rs_eta: tuple[float, ...] = (0.05, 0.15)  # sweep: RMS move per gradient step
    rs_validation_samples: int = 4  # x 12 validation prompts

    def __post_init__(self):
        unknown = [row for row in self.rows if row not in ROWS and row not in BRANCH_ROWS]
        if unknown or not self.rows:
            raise ValueError(f"unknown ablation rows {unknown}; choose from {[*ROWS, *BRANCH_ROWS]}")

    @classmethod
    def branch(cls, quick: bool = False) -> AblateConfig:
        """`biaslab branch`: FT, FT+MPC and the cheaper branches (BRANCH_ROWS) on the ablation's budgets
        (or quick ones), 3 training seeds, no RS-Corrector. Its units are the ablation's (same budgets,
        same prompts and sampling seeds), so both can share one run folder."""
        base = cls.quick() if quick else cls(seeds=(0, 1, 2))
        return dataclasses.replace(base, rows=("FT", "FT+MPC", *BRANCH_ROWS), rs_corrector=False)

    @classmethod
    def quick(cls, seeds: tuple[int, ...] = (0, 1)) -> AblateConfig:
        return cls(seeds=tuple(seeds), steps=2, batch_size=2, contrastive_every=1, denoise_steps=2, negatives_k=1,
                   samples_per_prompt=1, sample_steps=2, real_images=40, rs_prior_steps=3, rs_draws=1,
                   rs_batch_size=8, rs_last_k=(1,), rs_m_steps=(1,), rs_eta=(0.05, 0.15), rs_validation_samples=1)


@dataclass(frozen=True)
class AblateResult:
    out_dir: Path
    record: dict
    table: str


def slug(name: str) -> str:
    """A file-name form of a row name: "FT+MPC (judge features)" -> "FT_MPC_judge_features"."""
    return "".join(ch if ch.isalnum() or ch == "-" else "_" for ch in name).strip("_").replace("__", "_")


def _preset_and_space(row: str) -> tuple[str, str]:
    """(preset, L_P/L_C feature space) of a trained row; the BRANCH_ROWS are FT+MPC, label-free."""
    return ROWS.get(row, ROWS["FT+MPC"])


def training_plan(c: AblateConfig, weights_dir: Path, seed: int) -> dict[str, TrainConfig]:
    """row -> its TrainConfig for training seed `seed`, for each of `c.rows`."""
    plan = {}
    for row in c.rows:
        preset, space = _preset_and_space(row)
        branch = BRANCH_ROWS.get(row, BranchRow(c.denoise_steps, c.contrastive_every))
        weights = str(weights_dir / ("judge" if space == "biaslab-judge" else SSL))
        reference = LossWeights()
        plan[row] = TrainConfig(
            weights=dataclasses.replace(reference, perceptual=branch.factor * reference.perceptual,
                                        contrastive=branch.factor * reference.contrastive,
                                        mem=reference.mem if branch.memorization else 0.0),
            preset=preset, steps=c.steps, batch_size=c.batch_size, grad_accum=1, lr=c.lr,
            warmup_steps=max(1, c.steps // 20), rank=c.rank, alpha=float(c.rank), seed=seed,
            contrastive_every=branch.every, denoise_steps=branch.denoise_steps,
            cfg=c.cfg if branch.cfg is None else branch.cfg, checkpoint_every=0,
            perceptual_backbone=space, perceptual_weights=weights, contrastive_backbone=space,
            contrastive_weights=weights,
        )
    return plan


class Units:
    """The run's finished (row, seed) units under `folder`: verdicts, uint8 images, metrics."""

    def __init__(self, folder: Path, config: dict):
        self.folder = folder
        plan = folder / "plan.json"
        config = json.loads(json.dumps(config))  # tuples read back as lists
        recorded = json.loads(plan.read_text()) if plan.is_file() else None
        if recorded is not None and recorded != config:
            raise ValueError(f"{plan}: this run folder holds units of another configuration; use a new --out folder "
                             "or delete it")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(plan, json.dumps(config, indent=2, sort_keys=True) + "\n")

    def path(self, row: str, seed: int | None) -> Path:
        return self.folder / f"{slug(row)}{'' if seed is None else f'_seed{seed}'}.npz"

    def load(self, row: str, seed: int | None) -> dict | None:
        path = self.path(row, seed)
        if not path.is_file():
            return None
        with np.load(path) as data:
            unit = {key: data[key] for key in data.files if key != "metrics"}
            unit["metrics"] = json.loads(str(data["metrics"]))
        return unit

    def save(self, row: str, seed: int | None, unit: dict) -> dict:
        with atomic_path(self.path(row, seed)) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, metrics=json.dumps(unit["metrics"]),
                                **{k: v for k, v in unit.items() if k != "metrics"})
        return unit


def _score_unit(scorers: Scorers, images: torch.Tensor, prompts, training: torch.Tensor, real: torch.Tensor,
                seconds: float, extra: dict, seed: int) -> dict:
    """Verdict arrays, the images as uint8 [N, 32, 32, 3] and the image-set metrics of one unit."""
    verdicts = scorers.verdicts(images, [p[1] for p in prompts], [p[2] for p in prompts])
    kid_mean, kid_std = kid(scorers.second_judge.embed, real, images, seed=seed)
    groups = {}
    metrics = {
        "memorization": memorization_rate(images, training),
        "diversity": diversity(images, [groups.setdefault(p[0], len(groups)) for p in prompts]),
        "kid": kid_mean, "kid_std": kid_std, "seconds_per_image": seconds / len(prompts), **extra,
    }
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return {**verdicts, "images": pixels, "metrics": metrics}


def _prepare_ccub(run_dir: Path, ccub_dir: Path, bundle, weights_dir: Path, c: AblateConfig, on_step) -> Path:
    """The fine-tuning CCUB copy: held-out cells removed, negatives generated (kept on resume)."""
    ccub = run_dir / "ccub"
    if not (ccub / "metadata.jsonl").is_file():
        staging = run_dir / "ccub.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(ccub_dir, staging)
        removed = remove_cells(staging)
        log.info("fine-tuning CCUB: %d images of the held-out cells %s removed", removed, HELD_OUT_CELLS)
        staging.rename(ccub)
    settings = NegativeSettings(k=c.negatives_k, seed=c.sample_seed, steps=c.sample_steps, cfg=c.cfg, batch_size=50,
                                resolution=RESOLUTION)
    generate_negatives(bundle, load_world_controlnet(weights_dir, device=str(bundle.device)), ccub,
                       depth_from_dataset(), settings, on_step=on_step, preview=run_dir / "negatives_preview.png")
    return ccub


def ablate(out_dir: str | os.PathLike, config: AblateConfig = AblateConfig(), weights_dir: str | os.PathLike = WEIGHTS_DIR,
           ccub_dir: str | os.PathLike = BIASLAB_CCUB_DIR, device: str = "cpu",
           on_step: OnStep | None = None, run_dir: str | os.PathLike | None = None) -> AblateResult:
    """Run (or resume) the whole ablation: results and images in `out_dir`; the CCUB copy with its
    negatives, the LoRAs and the (row, seed) units in `run_dir` (default `out_dir`), which runs with
    the same budgets share."""
    out_dir, weights_dir, c = Path(out_dir), Path(weights_dir), config
    run_dir = out_dir if run_dir is None else Path(run_dir)
    start = time.perf_counter()
    for seed in c.seeds:
        check_independent(training_plan(c, weights_dir, seed), weights_dir, allowed=(CIRCULAR,))
    bundle = load_world(weights_dir, device=device)
    scorers = load_scorers(weights_dir, device)
    units = Units(run_dir / "units", {k: v for k, v in dataclasses.asdict(c).items() if k not in PER_RUN_FIELDS})
    ccub = _prepare_ccub(run_dir, Path(ccub_dir), bundle, weights_dir, c, on_step)
    dataset = load_ccub(ccub, resolution=RESOLUTION)
    negatives = torch.cat([dataset[i]["negatives"] for i in range(len(dataset))]).to(device)
    negatives_stereotype = scorers.stereotype(negatives)

    prompts = [p for p in evaluation_prompts() for _ in range(c.samples_per_prompt)]
    ccub_images = torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))]).to(device)
    training = round_trip(bundle.vae, ccub_images)
    real = round_trip(bundle.vae, authentic_renders(c.real_images, c.sample_seed).to(device))

    def generate(lora_path=None) -> tuple[torch.Tensor, float]:
        lap = time.perf_counter()
        pixels = sample_tensor(bundle, [p[0] for p in prompts], c.sample_seed, lora_path=lora_path,
                               steps=c.sample_steps, cfg=c.cfg, batch_size=64)
        return pixels.permute(0, 3, 1, 2).to(device) * 2 - 1, time.perf_counter() - lap

    if units.load(BASE, None) is None:
        images, seconds = generate()
        units.save(BASE, None, _score_unit(scorers, images, prompts, training, real, seconds, {}, c.sample_seed))
    for seed in c.seeds:
        for row, train_config in training_plan(c, weights_dir, seed).items():
            if units.load(row, seed) is not None:
                continue
            log.info("training %s, seed %d", row, seed)
            lap = time.perf_counter()
            folder = run_dir / "loras" / f"{slug(row)}_seed{seed}"
            trainer = SCoFTTrainer(bundle, dataset, train_config, folder)
            history = trainer.train(on_step)
            lora = trainer.export_lora(folder.with_suffix(".safetensors"))
            save_history_json(history, folder.parent / f"{folder.name}_loss_history.json")
            train_seconds = time.perf_counter() - lap
            del trainer
            images, seconds = generate(lora)
            units.save(row, seed, _score_unit(scorers, images, prompts, training, real, seconds,
                                              {"train_seconds": train_seconds}, c.sample_seed))

    sweep = None
    if c.rs_corrector:
        sweep = rs_sweep(bundle, ccub, scorers, c, units.folder / "rs_sweep.json", device)
        for seed in c.seeds:
            if units.load(RS_ROW, seed) is None:
                images, seconds, prior_info = rs_test_samples(bundle, ccub, [p[0] for p in prompts], sweep["best"], c,
                                                              seed, device)
                units.save(RS_ROW, seed, _score_unit(scorers, images, prompts, training, real, seconds,
                                                     {"prior": prior_info}, c.sample_seed))

    rows = [BASE, *c.rows, *([RS_ROW] if c.rs_corrector else [])]
    loaded = {row: {None: units.load(BASE, None)} if row == BASE else {s: units.load(row, s) for s in c.seeds}
              for row in rows}
    reference = copy_calibration(bundle.vae, ccub_images, training, real, c.sample_seed)
    record = aggregate(loaded, prompts, c.samples_per_prompt, [(a, b) for a, b in DIFFERENCES if a in rows and b in rows])
    record.update({
        "title": "Bias-lab ablation" if c.rs_corrector else "Bias-lab decoded-branch cost and effect",
        "rows": {row: _row_description(row, weights_dir) for row in rows},
        "held_out_cells": [list(cell) for cell in HELD_OUT_CELLS],
        "ccub_images_fine_tuned": len(dataset),
        "memorization_reference_distances": reference,
        "negatives": {"count": len(negatives), "judged_stereotype": {
            scorer: float(flags.mean()) for scorer, flags in negatives_stereotype.items()}},
        "rs_corrector_sweep": sweep,
        "unit_compute_seconds": round(sum(u["metrics"].get("train_seconds", 0.0) + u["metrics"]["seconds_per_image"]
                                          * len(prompts) for units_of_row in loaded.values()
                                          for u in units_of_row.values()), 1),
        "provenance": provenance(dataclasses.asdict(c), list(c.seeds), time.perf_counter() - start),
    })
    atomic_write_text(out_dir / "results.json", json.dumps(record, indent=2) + "\n")
    table = render_markdown(record)
    atomic_write_text(out_dir / "results.md", table)
    write_images(out_dir, loaded, prompts, c.samples_per_prompt, c.seeds[0], slug)
    log.info("ablation written to %s", out_dir)
    return AblateResult(out_dir, record, table)


def _row_description(row: str, weights_dir: Path) -> dict:
    """What a row is: trained or not, its preset and the feature space of its L_P / L_C."""
    if row == BASE:
        return {"trained": False, "feature_space": None, "circular": False}
    if row == RS_ROW:
        return {"trained": False, "feature_space": "RS-Corrector prior (world UNet encoder)", "circular": False}
    preset, space = _preset_and_space(row)
    folder = "judge" if space == "biaslab-judge" else SSL
    description = {"trained": True, "preset": preset, "feature_space": space, "circular": row == CIRCULAR,
                   "feature_weights": f"{weights_dir.name}/{folder}"}
    if row in BRANCH_ROWS:
        branch = BRANCH_ROWS[row]
        description.update(denoise_steps=branch.denoise_steps, contrastive_every=branch.every)
        if branch.factor != 1.0:
            description["branch_weight_factor"] = branch.factor
        if not branch.memorization:
            description["memorization_loss"] = False
        if branch.cfg is not None:
            description["branch_cfg"] = branch.cfg
    return description
