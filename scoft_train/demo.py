"""`make demo`: the whole pipeline on the embedded default, in a few minutes on a CPU.

The embedded default is the bias-lab world model: trained on a web corpus where three
invented minority cultures are mostly shown as one drab stereotype, it draws that
stereotype when asked for them. The demo takes a working copy of the shipped CCUB
folder (authentic images of every culture), makes the negatives the paper's way
(depth + ControlNet with the pretrained model), trains a SCoFT (FT+MPC) LoRA with the
judge's feature space as the perceptual backbone, and writes a baseline | SCoFT grid
from the same seeds plus a judge-scored table of stereotype rates before and after.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .assets import BIASLAB_CCUB_DIR
from .atomic import atomic_write_text
from .biaslab.artefacts import WORLD_SAMPLING, load_world_judge
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


@dataclass(frozen=True)
class DemoResult:
    grid: Path
    loss_plot: Path
    lora: Path
    table: Path


def demo_config(steps: int) -> TrainConfig:
    """SCoFT (all four losses) sized for a CPU; the judge is the L_P / L_C feature space."""
    return TrainConfig(
        preset="FT+MPC", steps=steps, batch_size=4, grad_accum=1, rank=8, alpha=8.0, lr=5e-4,
        warmup_steps=max(1, steps // 20), contrastive_every=5, denoise_steps=10, cfg=WORLD_SAMPLING["cfg"],
        perceptual_backbone="biaslab-judge", contrastive_backbone="biaslab-judge", checkpoint_every=0,
    )


def stereotype_table(bundle, lora: Path, seed: int = 0) -> tuple[str, dict]:
    """Judge verdicts on the minority cultures' held-out prompts, baseline vs SCoFT, same seeds."""
    judge = load_world_judge()
    rows = [row for row in held_out_prompts() if row[1] in MINORITY for _ in range(SAMPLES_PER_PROMPT)]
    prompts = [row[0] for row in rows]
    results = {}
    for name, lora_path in (("baseline", None), ("SCoFT", lora)):
        pixels = sample_tensor(bundle, prompts, seed, lora_path=lora_path, batch_size=64, **{
            k: WORLD_SAMPLING[k] for k in ("scheduler", "steps", "cfg")
        })
        verdicts = judge_generated(judge, pixels.permute(0, 3, 1, 2) * 2 - 1,
                                   [r[1] for r in rows], [r[2] for r in rows])
        results[name] = {what: verdicts.rate(what, MINORITY) for what in ("stereotype", "relevant", "faithful")}
    lines = [
        f"Minority cultures ({', '.join(MINORITY)}), {len(prompts)} samples, judged:",
        "",
        "| model | stereotype rate | cultural relevance | description fidelity |",
        "|---|---|---|---|",
        *(f"| {name} | {r['stereotype']:.2f} | {r['relevant']:.2f} | {r['faithful']:.2f} |" for name, r in results.items()),
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
        trained = train_scoft(bundle, dataset, demo_config(steps), out_dir, on_step=on_step)
    prompts = [f"a {concept} in {culture}" for culture in MINORITY for concept in ("house", "meal")]
    grid = compare(bundle, trained.lora, prompts, out_dir / "compare_grid.png", seed=seed, **WORLD_SAMPLING)
    table, results = stereotype_table(bundle, trained.lora, seed)
    atomic_write_text(out_dir / "stereotype_table.md", table)
    atomic_write_text(out_dir / "stereotype_table.json", json.dumps(results, indent=2))
    return DemoResult(grid=grid, loss_plot=trained.loss_plot, lora=trained.lora, table=out_dir / "stereotype_table.md")
