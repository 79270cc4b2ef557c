"""Rates with 95% bootstrap intervals over training seeds and prompts.

A row's outcome is an array [S, P]: for training seed s and prompt p, the share of that
prompt's samples where the verdict holds (every row uses the same sampling seeds). A
bootstrap replicate draws S seeds and P prompts with replacement and takes the mean of
the selected cells. Differences between rows are paired: both rows use the same drawn
seed indices (seed s of one row against seed s of the other) and the same drawn prompts;
a row with one seed (the base model) is that seed in every replicate.
"""

from __future__ import annotations

import numpy as np

REPLICATES = 2000
LEVEL = 0.95


def _draws(shape: tuple[int, int], replicates: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    seeds, prompts = shape
    return rng.integers(seeds, size=(replicates, seeds)), rng.integers(prompts, size=(replicates, prompts))


def _replicate_means(cells: np.ndarray, seed_draws: np.ndarray, prompt_draws: np.ndarray) -> np.ndarray:
    """Mean of each replicate's selected cells [R]; one-seed rows ignore the seed draw."""
    rows = np.zeros_like(seed_draws) if cells.shape[0] == 1 else seed_draws
    per_seed = cells[rows]  # [R, S', P]
    picked = np.take_along_axis(per_seed, prompt_draws[:, None, :].repeat(per_seed.shape[1], axis=1), axis=2)
    return picked.mean(axis=(1, 2))


def _summary(point: float, replicates: np.ndarray) -> dict:
    low, high = np.quantile(replicates, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return {"mean": float(point), "low": float(low), "high": float(high)}


def rate_interval(cells: np.ndarray, replicates: int = REPLICATES, seed: int = 0) -> dict:
    """{"mean", "low", "high"} of the rate in `cells` [S, P]."""
    cells = np.asarray(cells, dtype=float)
    seed_draws, prompt_draws = _draws(cells.shape, replicates, seed)
    return _summary(cells.mean(), _replicate_means(cells, seed_draws, prompt_draws))


def _paired_replicates(a: np.ndarray, b: np.ndarray, replicates: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Replicate means [R] of a and of b [S, P] (or [1, P]), paired by seed index and prompt."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired rows need the same prompts: {a.shape[1]} vs {b.shape[1]}")
    if 1 not in (a.shape[0], b.shape[0]) and a.shape[0] != b.shape[0]:
        raise ValueError(f"paired rows need the same seeds (or one seed): {a.shape[0]} vs {b.shape[0]}")
    seed_draws, prompt_draws = _draws((max(a.shape[0], b.shape[0]), a.shape[1]), replicates, seed)
    return _replicate_means(a, seed_draws, prompt_draws), _replicate_means(b, seed_draws, prompt_draws)


def difference_interval(a: np.ndarray, b: np.ndarray, replicates: int = REPLICATES, seed: int = 0) -> dict:
    """{"mean", "low", "high"} of rate(a) - rate(b), paired by seed index and prompt;
    a and b are [S, P] or [1, P] over the same prompts."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    mean_a, mean_b = _paired_replicates(a, b, replicates, seed)
    return _summary(a.mean() - b.mean(), mean_a - mean_b)


def cut_interval(a: np.ndarray, base: np.ndarray, replicates: int = REPLICATES, seed: int = 0) -> dict | None:
    """{"mean", "low", "high"} of 1 - rate(a) / rate(base), the share of base's rate that a
    removes (0.6 = a 60% cut), paired as difference_interval; replicates where base's rate
    is 0 have no cut and are left out. None where base's rate is 0: nothing to cut."""
    a, base = np.asarray(a, dtype=float), np.asarray(base, dtype=float)
    mean_a, mean_base = _paired_replicates(a, base, replicates, seed)
    kept = mean_base > 0
    if base.mean() == 0 or not kept.any():
        return None
    return _summary(1 - a.mean() / base.mean(), 1 - mean_a[kept] / mean_base[kept])


def excludes_zero(interval: dict) -> bool:
    return interval["low"] > 0 or interval["high"] < 0


def format_interval(interval: dict, signed: bool = False, digits: int = 2) -> str:
    """"0.42 [0.35, 0.49]" (signed: "+0.12 [+0.03, +0.21]")."""
    spec = f"{'+' if signed else ''}.{digits}f"
    return f"{interval['mean']:{spec}} [{interval['low']:{spec}}, {interval['high']:{spec}}]"
