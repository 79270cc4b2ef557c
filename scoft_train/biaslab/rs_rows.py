"""The ablation's RS-Corrector row: a sweep of the correction's settings on validation
prompts, then the best setting on the test prompts.

The prior is fitted on the fine-tuning CCUB copy (fair) against its negatives
(stereotypical); its direct-loss references are spread across the whole folder
(`rscorrector.prior.spread`), so every culture is among them. The sweep (K = corrected
late steps, M = gradient steps per corrected step, eta = RMS move per step; both losses)
samples the validation prompts (prompt_sets.validation_prompts: a wording no test set
uses, minority cultures) with the prior of seed `sample_seed`, and is read by the
development judge only, so the choice never sees a test prompt or an independent scorer.
The best setting has the lowest validation stereotype rate among those whose description
fidelity stays within FIDELITY_SLACK of uncorrected sampling. The test row then uses one
prior per training seed.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import torch

from ..atomic import atomic_write_text
from ..data import NEGATIVES_DIR
from ..models import ModelBundle
from ..rscorrector import Prior, fit_prior, sample_corrected
from .prompt_sets import validation_prompts
from .scoring import Scorers
from .world import RESOLUTION

RS_ROW = "RS-Corrector (best of sweep)"
FIDELITY_SLACK = 0.05


def fit_ablation_prior(bundle: ModelBundle, ccub: Path, c, seed: int) -> Prior:
    """A prior: CCUB images (fair) vs the negatives generated for them (stereotypical)."""
    return fit_prior(bundle, ccub, ccub / NEGATIVES_DIR, steps=c.rs_prior_steps, draws=c.rs_draws,
                     batch_size=c.rs_batch_size, seed=seed, max_timestep=c.rs_max_timestep, resolution=RESOLUTION)


def _corrected(bundle: ModelBundle, prior: Prior, prompts: list[str], setting: dict, c, device: str):
    """Images [N, 3, H, W] in [-1, 1] and wall seconds; K = 0 is the plain sampler."""
    lap = time.perf_counter()
    result = sample_corrected(bundle, prior, prompts, c.sample_seed, steps=c.sample_steps, cfg=c.cfg, scheduler="ddim",
                              last_k=setting["last_k"], m_steps=setting["m_steps"], eta=setting["eta"],
                              n_refs=c.rs_n_refs, batch_size=64)
    return result.images.permute(0, 3, 1, 2).to(device) * 2 - 1, time.perf_counter() - lap


def rs_sweep(bundle: ModelBundle, ccub: Path, scorers: Scorers, c, cache: Path, device: str) -> dict:
    """{"settings": [per setting: validation stereotype / fidelity / seconds], "best": setting,
    ...}; reused from `cache` when it exists (the sweep is part of the run's units)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    prior = fit_ablation_prior(bundle, ccub, c, c.sample_seed)
    rows = [p for p in validation_prompts() for _ in range(c.rs_validation_samples)]
    grid = [{"last_k": 0, "m_steps": 0, "eta": 0.0}] + [
        {"last_k": k, "m_steps": m, "eta": e} for k, m, e in itertools.product(c.rs_last_k, c.rs_m_steps, c.rs_eta)
        if k <= c.sample_steps - 1]
    measured = []
    for setting in grid:
        images, seconds = _corrected(bundle, prior, [r[0] for r in rows], setting, c, device)
        verdicts = scorers.verdicts(images, [r[1] for r in rows], [r[2] for r in rows])
        measured.append({**setting, "validation_stereotype": float(verdicts["judge/stereotype"].mean()),
                         "validation_fidelity": float(verdicts["judge/faithful"].mean()),
                         "seconds_per_image": seconds / len(rows)})
    plain = measured[0]
    allowed = [m for m in measured[1:] if m["validation_fidelity"] >= plain["validation_fidelity"] - FIDELITY_SLACK]
    best = min(allowed or measured[1:], key=lambda m: (m["validation_stereotype"], m["seconds_per_image"]))
    record = {
        "validation_prompts": sorted({r[0] for r in rows}), "samples": len(rows), "selected_by": "development judge",
        "fidelity_slack": FIDELITY_SLACK, "prior_heldout_accuracy": prior.heldout_accuracy,
        "settings": measured, "best": {k: best[k] for k in ("last_k", "m_steps", "eta")},
    }
    atomic_write_text(cache, json.dumps(record, indent=2) + "\n")
    return record


def rs_test_samples(bundle: ModelBundle, ccub: Path, prompts: list[str], best: dict, c, seed: int,
                    device: str) -> tuple[torch.Tensor, float, dict]:
    """The test prompts with the best setting and the prior of training seed `seed`."""
    prior = fit_ablation_prior(bundle, ccub, c, seed)
    images, seconds = _corrected(bundle, prior, prompts, best, c, device)
    return images, seconds, {"heldout_accuracy": prior.heldout_accuracy, **best}
