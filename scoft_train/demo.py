"""`make demo`: the whole pipeline on the embedded default, in a few minutes on a CPU.

The embedded default is the bias-lab world model: trained on a web corpus where three
invented minority cultures are mostly shown as one drab stereotype, it draws that
stereotype when asked for them. The demo takes a working copy of the shipped CCUB
folder (authentic images of every culture), makes the negatives the paper's way
(depth + ControlNet with the pretrained model), trains a SCoFT (FT+MPC) LoRA with the
lab's label-free encoder as the perceptual backbone (with a live preview every
PREVIEW_EVERY steps in previews/), and writes a baseline | LoRA 0.5 | SCoFT grid, three
seeds per prompt from the same seeds, each cell badged with the second judge's verdict,
plus a table of its rates before and after with 95% bootstrap intervals. The second
judge is a scorer no training loss loads.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .assets import BIASLAB_CCUB_DIR
from .atomic import atomic_write_text
from .assets import WEIGHTS_DIR
from .biaslab.artefacts import WORLD_SAMPLING
from .biaslab.scorers import SECOND_JUDGE
from .biaslab.second_judge import load_second_judge
from .biaslab.corpus import held_out_prompts
from .biaslab.evaluate import judge_generated
from .biaslab.world import MINORITY
from .config import TrainConfig
from .controlnet import default_controlnet
from .data import load_ccub
from .models import load_default_model
from .negatives import NegativeSettings, depth_from_dataset, generate_negatives
from .progress import tqdm_progress
from .sample_data import working_copy
from .sampling import sample_tensor
from .stages import compare, train_scoft

log = logging.getLogger(__name__)

SAMPLES_PER_PROMPT = 4
RATES = ("stereotype", "relevant", "faithful")
BOOTSTRAP_DRAWS = 2000
PREVIEW_EVERY = 50
GRID_SEEDS = 3  # samples per prompt in the comparison grid
GRID_STRENGTHS = (0.5,)  # LoRA strengths shown between baseline and SCoFT (1.0)
STEREOTYPE_MARK = ("S", (200, 30, 30))
AUTHENTIC_MARK = ("R", (20, 140, 60))


@dataclass(frozen=True)
class DemoResult:
    grid: Path
    loss_plot: Path
    lora: Path
    table: Path


def demo_config(steps: int) -> TrainConfig:
    """SCoFT (all four losses) sized for a CPU; L_P / L_C in the lab's label-free encoder's features
    (never in a scorer's)."""
    return TrainConfig(
        preset="FT+MPC", steps=steps, batch_size=4, grad_accum=1, rank=8, alpha=8.0, lr=5e-4,
        warmup_steps=max(1, steps // 20), contrastive_every=5, denoise_steps=10, cfg=WORLD_SAMPLING["cfg"],
        perceptual_backbone="biaslab-ssl", contrastive_backbone="biaslab-ssl", checkpoint_every=0,
    )


def bootstrap_interval(hits: torch.Tensor, draws: int = BOOTSTRAP_DRAWS, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of `hits` [prompts, samples] (0/1 or any values, or a
    paired difference of them) under a two-stage bootstrap: prompts drawn with replacement,
    then the samples within each drawn prompt with replacement. Returns (low, high)."""
    values = hits.double().numpy()
    prompts, samples = values.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(prompts, size=(draws, prompts, 1))
    cols = rng.integers(samples, size=(draws, prompts, samples))
    means = values[rows, cols].mean(axis=(1, 2))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def load_scorer():
    """The demo's scorer: the lab's second judge, which no training loss loads (the loss's
    feature space is the label-free encoder), so the table does not grade its own training."""
    return load_second_judge(WEIGHTS_DIR / SECOND_JUDGE)


def judge_marks(judge, prompt_rows: dict[str, tuple[str, str]]):
    """A grid scorer: the judge's verdict per image as a badge, S (red) = the stereotype,
    R (green) = the named culture's own signature; no badge = neither."""

    def scorer(prompts: list[str], pixels: torch.Tensor) -> list:
        verdicts = judge_generated(judge, pixels.permute(0, 3, 1, 2) * 2 - 1,
                                   [prompt_rows[p][0] for p in prompts], [prompt_rows[p][1] for p in prompts])
        return [STEREOTYPE_MARK if bad else AUTHENTIC_MARK if own else None
                for bad, own in zip(verdicts.stereotype.tolist(), verdicts.relevant.tolist())]

    return scorer


def stereotype_table(bundle, lora: Path, seed: int = 0) -> tuple[str, dict]:
    """Judge verdicts on the minority cultures' held-out prompts, baseline vs SCoFT, same seeds,
    each rate with its 95% two-stage bootstrap interval, and the SCoFT - baseline change
    with a paired interval (same resampled prompts and samples for both)."""
    judge = load_scorer()
    rows = [row for row in held_out_prompts() if row[1] in MINORITY for _ in range(SAMPLES_PER_PROMPT)]
    prompts = [row[0] for row in rows]
    hits, results = {}, {}
    for name, lora_path in (("baseline", None), ("SCoFT", lora)):
        pixels = sample_tensor(bundle, prompts, seed, lora_path=lora_path, batch_size=64, **{
            k: WORLD_SAMPLING[k] for k in ("scheduler", "steps", "cfg")
        })
        verdicts = judge_generated(judge, pixels.permute(0, 3, 1, 2) * 2 - 1,
                                   [r[1] for r in rows], [r[2] for r in rows])
        hits[name] = {what: getattr(verdicts, what).reshape(-1, SAMPLES_PER_PROMPT) for what in RATES}
        results[name] = {what: {"rate": verdicts.rate(what, MINORITY), "ci95": bootstrap_interval(hits[name][what], seed=seed)}
                         for what in RATES}
    results["SCoFT - baseline"] = {
        what: {"rate": results["SCoFT"][what]["rate"] - results["baseline"][what]["rate"],
               "ci95": bootstrap_interval(hits["SCoFT"][what].double() - hits["baseline"][what].double(), seed=seed)}
        for what in RATES
    }

    def cell(entry: dict, number: str) -> str:
        return f"{entry['rate']:{number}} [{entry['ci95'][0]:{number}}, {entry['ci95'][1]:{number}}]"

    lines = [
        f"Minority cultures ({', '.join(MINORITY)}): {len(prompts) // SAMPLES_PER_PROMPT} held-out prompts x "
        f"{SAMPLES_PER_PROMPT} samples = {len(prompts)} images per model, same seeds, judged by the second judge (no training loss loads it).",
        "",
        "| model | stereotype rate | cultural relevance | description fidelity |",
        "|---|---|---|---|",
        *(f"| {name} | " + " | ".join(cell(r[what], "+.2f" if " - " in name else ".2f") for what in RATES) + " |"
          for name, r in results.items()),
        "",
        f"Each cell: the rate, then its 95% interval in brackets: a two-stage bootstrap ({BOOTSTRAP_DRAWS} draws, "
        "seed 0) that draws the prompts with replacement and then the samples within each drawn prompt, "
        "percentile method. The last row is the change, with a paired interval (both models resampled with the "
        "same prompts and samples); an interval that excludes 0 is a change beyond sampling noise.",
        "",
        "Grid badges: S (red) = the second judge sees the stereotype; R (green) = it sees the named culture's own "
        "signature; no badge = neither.",
    ]
    return "\n".join(lines) + "\n", results


def run_demo(out_dir: str | Path, steps: int = 300, seed: int = 0) -> DemoResult:
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    bundle = load_default_model()
    folder = working_copy(BIASLAB_CCUB_DIR, out_dir / "ccub")
    dataset = load_ccub(folder, resolution=bundle.resolution, random_flip=True, missing_negatives_ok=True)
    with tqdm_progress("negatives (depth + ControlNet, pretrained model)") as on_step:
        dataset = generate_negatives(
            bundle, default_controlnet(bundle), dataset, depth_from_dataset(),
            NegativeSettings(k=1, seed=seed, steps=WORLD_SAMPLING["steps"], cfg=WORLD_SAMPLING["cfg"], batch_size=50,
                             resolution=bundle.resolution),
            on_step=on_step, preview=out_dir / "negatives_preview.png",
        ).dataset
    with tqdm_progress("SCoFT training") as on_step:
        trained = train_scoft(bundle, dataset, demo_config(steps), out_dir, on_step=on_step,
                              preview_every=PREVIEW_EVERY)
    prompt_rows = {f"a {concept} in {culture}": (culture, concept) for culture in MINORITY for concept in ("house", "meal")}
    grid = compare(bundle, trained.lora, list(prompt_rows), out_dir / "compare_grid.png", seed=seed,
                   seeds_per_prompt=GRID_SEEDS, extra_strengths=GRID_STRENGTHS,
                   scorer=judge_marks(load_scorer(), prompt_rows), **WORLD_SAMPLING)
    table, results = stereotype_table(bundle, trained.lora, seed)
    atomic_write_text(out_dir / "stereotype_table.md", table)
    atomic_write_text(out_dir / "stereotype_table.json", json.dumps(results, indent=2))
    return DemoResult(grid=grid, loss_plot=trained.loss_plot, lora=trained.lora, table=out_dir / "stereotype_table.md")
