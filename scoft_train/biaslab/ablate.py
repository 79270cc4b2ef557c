"""`biaslab ablate`: the paper's ablation, measured by the judge instead of 51 people.

1. Copy the sample CCUB into the run folder; generate K negatives per image with the
   world model + its depth ControlNet (the engine's negatives stage, ground-truth depth).
2. Train one LoRA per preset (FT, FT+M, FT+MP, FT+MPC) with the same seed and steps;
   L_P / L_C use the judge's feature space.
3. Sample every held-out prompt N times (same seeds for every model), including a
   wording the CCUB captions never use, and score base + variants: stereotype rate,
   cultural relevance, description fidelity (judge), memorization, diversity, KID.
4. Write results.md (table), results.json, metrics_chart.png, comparison.png and
   grids/<variant>.png into the run folder.
5. RS-Corrector rows (rs_rows.py): one latent prior fitted on the CCUB copy vs its
   negatives; the same prompts/seeds sampled with the late-step correction on the base
   model (prior loss, direct loss, both) and on the FT+MPC LoRA. Every row also reports
   its sampling wall time per image, measured in this run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..assets import BIASLAB_CCUB_DIR, WEIGHTS_DIR
from ..atomic import atomic_write_text
from ..config import PRESETS, TrainConfig
from ..data import load_ccub
from ..negatives import NegativeSettings, depth_from_dataset, generate_negatives
from ..plot import save_history_json
from ..progress import OnStep
from ..sampling import sample_tensor
from ..trainer import SCoFTTrainer
from .artefacts import load_world, load_world_controlnet, load_world_judge
from .corpus import held_out_prompts, render_arrays
from .evaluate import judge_generated, to_model_range
from .metrics import COPY_THRESHOLD, diversity, kid, memorization_rate, nearest_distance
from .render import SceneSpec
from .rs_rows import RS_ROWS, fit_ablation_prior, rs_samples
from .report import (
    METRICS, bar_chart, comparison_grid, example_grid, markdown_table, per_culture_table, write_markdown,
)
from .training import encode, round_trip
from .world import CONCEPTS, CULTURE_NAMES, MINORITY, RESOLUTION

log = logging.getLogger(__name__)

BASE = "base"
REAL_SEED_OFFSET = 9_000_000


@dataclass(frozen=True)
class AblateConfig:
    """Budgets of the ablation (defaults: the full run, <= 30 min on 2 cores; `quick()`: CI)."""

    seed: int = 0
    steps: int = 400  # LoRA optimizer steps per variant
    batch_size: int = 4
    rank: int = 8
    lr: float = 5e-4
    contrastive_every: int = 5
    denoise_steps: int = 10
    negatives_k: int = 2
    samples_per_prompt: int = 8  # x 40 held-out prompts
    sample_steps: int = 20
    cfg: float = 5.0
    real_images: int = 400  # held-out authentic renders (KID reference)
    rs_prior_steps: int = 300  # RS-Corrector prior: head updates
    rs_draws: int = 16  # noisy versions per training latent
    rs_batch_size: int = 64
    rs_max_timestep: int = 400  # only the late steps are corrected
    rs_last_k: int = 4  # corrected denoising steps (the last K)
    rs_m_steps: int = 2  # gradient steps per corrected step
    rs_eta: float = 0.05  # RMS move per gradient step
    rs_n_refs: int = 4  # reference latents per side (direct loss)

    @classmethod
    def quick(cls, seed: int = 0) -> AblateConfig:
        return cls(seed=seed, steps=2, batch_size=2, contrastive_every=1, denoise_steps=2, negatives_k=1,
                   samples_per_prompt=2, sample_steps=2, real_images=40, rs_prior_steps=3, rs_draws=1,
                   rs_batch_size=8, rs_last_k=1, rs_m_steps=1, rs_n_refs=2)


@dataclass(frozen=True)
class AblateResult:
    out_dir: Path
    results: dict[str, dict[str, float]]
    table: str


def _slug(name: str) -> str:
    """A file-name form of a variant name: "FT+MPC" -> "FT_MPC", "RS-Corrector (prior)" -> "RS-Corrector_prior"."""
    return re.sub(r"[^A-Za-z0-9-]+", "_", name).strip("_")


FEATURE_SPACE = "biaslab-judge"  # L_P and L_C in the judge's feature space (no VGG/DINO offline)


def _train_config(preset: str, c: AblateConfig, judge_dir: Path) -> TrainConfig:
    return TrainConfig(
        preset=preset, steps=c.steps, batch_size=c.batch_size, grad_accum=1, lr=c.lr, warmup_steps=max(1, c.steps // 20),
        rank=c.rank, alpha=float(c.rank), seed=c.seed, contrastive_every=c.contrastive_every,
        denoise_steps=c.denoise_steps, cfg=c.cfg, checkpoint_every=0,
        perceptual_backbone=FEATURE_SPACE, perceptual_weights=str(judge_dir),
        contrastive_backbone=FEATURE_SPACE, contrastive_weights=str(judge_dir),
    )


def _authentic_renders(count: int, seed: int) -> torch.Tensor:
    """Fresh authentic scenes, every culture x concept in turn, [count, 3, 32, 32] in [-1, 1]."""
    cells = [(name, concept) for name in CULTURE_NAMES for concept in CONCEPTS]
    specs = [SceneSpec(cells[i % len(cells)][1], cells[i % len(cells)][0], False, i % 4 == 0, seed + REAL_SEED_OFFSET + i)
             for i in range(count)]
    return to_model_range(render_arrays(specs)[0])


def ablate(out_dir: str | os.PathLike, config: AblateConfig = AblateConfig(), weights_dir: str | os.PathLike = WEIGHTS_DIR,
           ccub_dir: str | os.PathLike = BIASLAB_CCUB_DIR, device: str = "cpu",
           on_step: OnStep | None = None) -> AblateResult:
    """Run the whole ablation into `out_dir` (created; negatives already there are reused)."""
    out_dir, weights_dir, c = Path(out_dir), Path(weights_dir), config
    start = time.perf_counter()
    timings: dict[str, float] = {}
    bundle = load_world(weights_dir, device=device)
    judge = load_world_judge(weights_dir, device=device)
    ccub = out_dir / "ccub"
    if not ccub.exists():
        shutil.copytree(ccub_dir, ccub)
    settings = NegativeSettings(k=c.negatives_k, seed=c.seed, steps=c.sample_steps, cfg=c.cfg, batch_size=50,
                                resolution=RESOLUTION)
    generate_negatives(bundle, load_world_controlnet(weights_dir, device=device), ccub, depth_from_dataset(),
                       settings, on_step=on_step, preview=out_dir / "negatives_preview.png")
    dataset = load_ccub(ccub, resolution=RESOLUTION)
    negatives = torch.cat([dataset[i]["negatives"] for i in range(len(dataset))]).to(device)
    negatives_stereotype = float(judge.predict(negatives)["stereotype"].float().mean())
    timings["negatives"] = time.perf_counter() - start

    rows = [row for row in held_out_prompts() for _ in range(c.samples_per_prompt)]
    prompts = [row[0] for row in rows]

    def generate(lora_path=None) -> torch.Tensor:
        pixels = sample_tensor(bundle, prompts, c.seed, lora_path=lora_path, steps=c.sample_steps, cfg=c.cfg,
                               batch_size=64)
        return pixels.permute(0, 3, 1, 2).to(device) * 2 - 1

    seconds: dict[str, float] = {}
    lap = time.perf_counter()
    samples = {BASE: generate()}
    seconds[BASE] = time.perf_counter() - lap
    loras: dict[str, Path] = {}
    for preset in PRESETS:
        lap = time.perf_counter()
        trainer = SCoFTTrainer(bundle, dataset, _train_config(preset, c, weights_dir / "judge"),
                               out_dir / "loras" / _slug(preset))
        history = trainer.train(on_step)
        lora = loras[preset] = trainer.export_lora(out_dir / "loras" / f"{_slug(preset)}.safetensors")
        save_history_json(history, out_dir / "loras" / f"{_slug(preset)}_loss_history.json")
        sampling = time.perf_counter()
        samples[preset] = generate(lora)
        seconds[preset] = time.perf_counter() - sampling
        timings[preset] = time.perf_counter() - lap
        del trainer

    lap = time.perf_counter()
    prior = fit_ablation_prior(bundle, ccub, c)
    timings["rs_prior_fit"] = time.perf_counter() - lap
    rs_images, rs_seconds = rs_samples(bundle, prior, prompts, c, loras["FT+MPC"], device)
    samples.update(rs_images)
    seconds.update(rs_seconds)
    timings["rs_sampling"] = sum(rs_seconds.values())

    ccub_images = torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))]).to(device)
    training = round_trip(bundle.vae, ccub_images)
    real = _authentic_renders(c.real_images, c.seed).to(device)
    reference = _copy_references(bundle.vae, ccub_images, training, round_trip(bundle.vae, real), c.seed)
    results = {name: _score(judge, images, rows, training, real, c.seed) | {"seconds_per_image": seconds[name] / len(prompts)}
               for name, images in samples.items()}
    table = markdown_table(results)
    _write_outputs(out_dir, c, results, table, samples, rows, reference, negatives_stereotype, timings, start, prior)
    return AblateResult(out_dir, results, table)


def _copy_references(vae, ccub_images: torch.Tensor, training: torch.Tensor, fresh: torch.Tensor,
                     seed: int) -> dict[str, float]:
    """Where copies and non-copies fall against the copy threshold, measured to `training`
    (the round-tripped CCUB images): decoded posterior samples of the CCUB images, and
    fresh authentic renders (round-tripped)."""
    mean, std = encode(vae, ccub_images)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        copies = vae.decode(mean + std * torch.randn(mean.shape, generator=generator).to(mean.device)).sample.clamp(-1, 1)
    return {
        "copy_threshold": COPY_THRESHOLD,
        "decoded_ccub_sample_median": float(nearest_distance(copies, training).median()),
        "fresh_authentic_median": float(nearest_distance(fresh, training).median()),
        "fresh_authentic_flagged": memorization_rate(fresh, training),
    }


def _score(judge, images: torch.Tensor, rows, training: torch.Tensor, real: torch.Tensor, seed: int) -> dict[str, float]:
    verdicts = judge_generated(judge, images, [r[1] for r in rows], [r[2] for r in rows])
    kid_mean, kid_std = kid(judge, real, images, seed=seed)
    return {
        "stereotype_rate_minority": verdicts.rate("stereotype", MINORITY),
        "stereotype_rate": verdicts.rate("stereotype"),
        "cultural_relevance": verdicts.rate("relevant"),
        "description_fidelity": verdicts.rate("faithful"),
        "memorization": memorization_rate(images, training),
        "diversity": diversity(images, _prompt_groups(rows)),
        "kid": kid_mean,
        "kid_std": kid_std,
        "stereotype_rate_per_culture": verdicts.per_culture("stereotype"),
        "cultural_relevance_per_culture": verdicts.per_culture("relevant"),
    }


def _prompt_groups(rows) -> list[int]:
    """The index of each sample's prompt."""
    index: dict[str, int] = {}
    return [index.setdefault(row[0], len(index)) for row in rows]


def _write_outputs(out_dir, c, results, table, samples, rows, reference, negatives_stereotype, timings, start,
                   prior) -> None:
    prompts = [row[0] for row in rows]
    n = c.samples_per_prompt
    unique = prompts[::n]
    for name, images in samples.items():
        example_grid(images, unique, n, out_dir / "grids" / f"{_slug(name)}.png")
    minority_rows = [i * n for i, row in enumerate(rows[::n]) if row[1] in MINORITY]
    comparison_grid(samples, prompts, minority_rows[:: max(1, len(minority_rows) // 12)], out_dir / "comparison.png")
    bar_chart(results, out_dir / "metrics_chart.png")
    timings["total"] = time.perf_counter() - start
    record = {
        "config": dataclasses.asdict(c),
        "feature_space": FEATURE_SPACE,
        "held_out_prompts": unique,
        "samples_per_variant": len(prompts),
        "metrics": {key: {"title": title, "better": better} for key, (title, better) in METRICS.items()},
        "results": results,
        "memorization_reference_distances": reference,
        "negatives_judged_stereotype": negatives_stereotype,
        "rs_corrector_prior": {
            "heldout_accuracy": prior.heldout_accuracy,
            "heldout_accuracy_by_timestep": json.loads(prior.info["heldout_accuracy_by_timestep"]),
            "fair": prior.info["fair"], "fair_size": int(prior.info["fair_size"]),
            "stereo": prior.info["stereo"], "stereo_size": int(prior.info["stereo_size"]),
            "heldout_fair": int(prior.info["heldout_fair"]), "heldout_stereo": int(prior.info["heldout_stereo"]),
            "rows": {name: {"w_prior": wp, "w_direct": wd, "model": "FT+MPC LoRA" if on_lora else BASE}
                     for name, (wp, wd, on_lora) in RS_ROWS.items()},
        },
        "wall_time_s": {k: round(v, 1) for k, v in timings.items()},
    }
    atomic_write_text(out_dir / "results.json", json.dumps(record, indent=2) + "\n")
    notes = [
        "`*` marks the minority cultures (about 85% stereotype renderings in the web corpus).",
        f"{len(prompts)} samples per model: {len(unique)} held-out prompts x {n} seeds (the same seeds for every model); "
        "half the prompts use a wording the CCUB captions never use.",
        f"LoRA: rank {c.rank}, {c.steps} steps, batch {c.batch_size}, lr {c.lr}, seed {c.seed}; L_P and L_C in the judge's "
        f"feature space; decoded branch every {c.contrastive_every} steps with {c.denoise_steps} denoising steps.",
        f"Sampling: DDIM {c.sample_steps} steps, cfg {c.cfg}. Negatives: {c.negatives_k} per CCUB image from the world "
        f"model + depth ControlNet; the judge calls {negatives_stereotype:.0%} of them stereotype.",
        f"Memorization: nearest VAE round-tripped CCUB training image closer than RMSE {reference['copy_threshold']} "
        f"(0..1 pixels). Calibration: a decoded posterior sample of a CCUB image (a copy) sits at "
        f"{reference['decoded_ccub_sample_median']:.3f}, a fresh authentic render at "
        f"{reference['fresh_authentic_median']:.3f} (medians); {reference['fresh_authentic_flagged']:.1%} of fresh "
        "authentic renders are flagged (the metric's floor for a model that draws new authentic images).",
        f"Diversity: mean pairwise RMSE between samples of one prompt. KID: judge embeddings, against "
        f"{c.real_images} held-out authentic renders.",
        f"RS-Corrector: one latent prior per run, fitted on the CCUB working copy ({prior.info['fair_size']} images, "
        f"fair) vs its negatives ({prior.info['stereo_size']}, stereotypical); {c.rs_prior_steps} head steps, "
        f"{c.rs_draws} noisy draws per latent, timesteps 0..{c.rs_max_timestep}; held-out balanced accuracy "
        f"{prior.heldout_accuracy:.3f} ({prior.info['heldout_fair']} + {prior.info['heldout_stereo']} held-out images, "
        f"chance 0.5). Correction on the last {c.rs_last_k} of {c.sample_steps} DDIM steps, {c.rs_m_steps} gradient "
        f"steps of RMS {c.rs_eta}, {c.rs_n_refs} references per side; (prior) = prior loss only, (direct) = direct "
        "loss only, (both) = both; rows without FT+MPC correct the base model, FT+MPC + RS-Corrector corrects the "
        "FT+MPC LoRA (same file as its row).",
        "Seconds per image: wall time of sampling that row's images in this run (batch 64, "
        f"{torch.get_num_threads()} torch threads) over {len(prompts)}; LoRA training and the prior fit are not included "
        f"(prior fit: {timings['rs_prior_fit']:.0f} s).",
        f"Wall time: {timings['total']:.0f} s.",
    ]
    per_culture = "\n".join(per_culture_table(results, key, title) for key, title in (
        ("stereotype_rate_per_culture", "Stereotype rate per culture (lower is better)"),
        ("cultural_relevance_per_culture", "Cultural relevance per culture (higher is better)"),
    ))
    write_markdown(out_dir / "results.md", "Bias-lab ablation", table + "\n" + per_culture, notes)
    log.info("ablation written to %s\n%s", out_dir, table)
