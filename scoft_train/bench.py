"""`python -m scoft_train bench train`: plain LoRA step vs SCoFT (FT+MPC) step, side by side.

Both run in one process on the embedded tiny model and the sample CCUB folder; each
variant gets warm-up steps, then the median of timed optimizer steps (grad_accum 1).
The SCoFT step is timed with the decoded-generation branch active; the amortised cost
spreads it over `contrastive_every` steps as training does. The breakdown splits the
branch step into UNet calls with and without grad, decode, features and backward.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from .config import TrainConfig
from .data import load_ccub
from .models import load_tiny_model
from .sample_data import CCUB_DEMO_DIR
from .trainer import SCoFTTrainer

AMORTISE_OVER = 10


@dataclass
class TrainBench:
    plain: float
    scoft_branch: float
    scoft_no_branch: float
    breakdown: dict[str, float] = field(default_factory=dict)

    @property
    def amortised(self) -> float:
        return (self.scoft_branch + (AMORTISE_OVER - 1) * self.scoft_no_branch) / AMORTISE_OVER

    def report(self) -> str:
        lines = [
            "bench train (tiny model, 64 px, batch 1, median seconds per optimizer step)",
            f"  plain LoRA step (FT)            {self.plain:.4f} s",
            f"  FT+MPC step without branch      {self.scoft_no_branch:.4f} s  ({self.scoft_no_branch / self.plain:.1f}x)",
            f"  FT+MPC step with branch         {self.scoft_branch:.4f} s  ({self.scoft_branch / self.plain:.1f}x)",
            f"  FT+MPC amortised (branch 1/{AMORTISE_OVER})  {self.amortised:.4f} s  ({self.amortised / self.plain:.1f}x)",
            "  where a branch step's time goes:",
        ]
        total = sum(self.breakdown.values())
        for name, seconds in sorted(self.breakdown.items(), key=lambda kv: -kv[1]):
            lines.append(f"    {name:<22} {seconds:.4f} s  {100 * seconds / total:5.1f}%")
        return "\n".join(lines)


class _UNetTimer:
    """Forward hooks splitting UNet time into calls with and without autograd."""

    def __init__(self, unet, timings: dict[str, float]):
        self.timings, self.start = timings, 0.0
        self.handles = [
            unet.register_forward_pre_hook(self._pre),
            unet.register_forward_hook(self._post),
        ]

    def _pre(self, module, args):
        self.start = time.perf_counter()

    def _post(self, module, args, output):
        key = "unet_forward_grad" if torch.is_grad_enabled() else "unet_forward_nograd"
        self.timings[key] += time.perf_counter() - self.start


def _median_step(trainer: SCoFTTrainer, steps: int, warmup: int, branch: bool) -> float:
    every = 1 if branch else 1_000_000  # the largest contrastive_every: step 1 never runs the branch
    trainer.warm_caches()
    trainer.config = dataclasses.replace(trainer.config, contrastive_every=every)
    for _ in range(warmup):
        trainer.step = 1
        trainer.train_step()
    times = []
    for _ in range(steps):
        trainer.step = 0 if branch else 1
        start = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_train(steps: int = 5, warmup: int = 2, threads: int = 2) -> TrainBench:
    torch.set_num_threads(threads)
    bundle = load_tiny_model()
    dataset = load_ccub(CCUB_DEMO_DIR, resolution=bundle.resolution)
    common = dict(steps=10**6, grad_accum=1, rank=8, alpha=8.0, allow_random_backbone=True, lr_schedule="constant")
    plain = SCoFTTrainer(bundle, dataset, TrainConfig(preset="FT", **common))
    scoft = SCoFTTrainer(bundle, dataset, TrainConfig(preset="FT+MPC", **common))
    result = TrainBench(
        plain=_median_step(plain, steps, warmup, branch=False),
        scoft_no_branch=_median_step(scoft, steps, warmup, branch=False),
        scoft_branch=_median_step(scoft, steps, warmup, branch=True),
    )
    timings: dict[str, float] = defaultdict(float)
    scoft.timings, scoft.profile = timings, True
    timer = _UNetTimer(scoft.unet, timings)
    _median_step(scoft, steps, 0, branch=True)
    for handle in timer.handles:
        handle.remove()
    branch_nograd = timings["unet_forward_nograd"] - timings["nograd_denoise"]
    parts = {
        "branch no-grad UNet calls": branch_nograd,
        "UNet calls with grad": timings["unet_forward_grad"],
        "L_M no-grad UNet call": timings["nograd_denoise"],
        "VAE decode": timings["decode"],
        "features (L_P, L_C)": timings["features"],
        "backward": timings["backward"],
    }
    measured = sum(timings[k] for k in ("encode", "grad_step", "nograd_denoise", "denoise_branch", "decode",
                                        "features", "backward", "optimizer"))
    parts["other (encode, optimizer, DDIM math)"] = measured - sum(parts.values())
    result.breakdown = {k: v / steps for k, v in parts.items()}
    return result


@dataclass
class NegativesBench:
    images: int
    batch_size: int
    batched_seconds: float
    per_image_seconds: float

    def report(self) -> str:
        batched, single = self.images / self.batched_seconds, self.images / self.per_image_seconds
        return "\n".join([
            f"bench negatives (tiny model + tiny ControlNet, 64 px, {self.images} images, one run each)",
            f"  generate_negatives, batch {self.batch_size:<3}      {batched:.2f} images/s",
            f"  one diffusers pipeline call per image  {single:.2f} images/s",
            f"  ratio batched / per-image             {batched / single:.2f}x",
        ])


def bench_negatives(k: int = 2, steps: int = 10, batch_size: int = 8, threads: int = 2) -> NegativesBench:
    """Images/s of `generate_negatives` (batched, files written) vs one plain pipeline call per
    image (nothing written), same tiny model, ControlNet, depth maps, seeds and settings."""
    import shutil
    import tempfile
    from pathlib import Path

    from .controlnet import build_tiny_controlnet
    from .imagefile import load_rgb
    from .negatives import (
        NegativeSettings, controlnet_pipeline, depth_from_images, generate_negatives, list_images, negative_seed,
        render,
    )

    torch.set_num_threads(threads)
    bundle = load_tiny_model()
    controlnet = build_tiny_controlnet(bundle.unet)
    settings = NegativeSettings(k=k, steps=steps, batch_size=batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ccub"
        shutil.copytree(CCUB_DEMO_DIR / "images", root)
        for item in list_images(CCUB_DEMO_DIR):
            (root / f"{item.stem}.txt").write_text(item.text, encoding="utf-8")
        items = list_images(root)
        depths = []
        for item in items:
            depths.append(load_rgb(item.image).convert("L").convert("RGB"))
        pipe = controlnet_pipeline(bundle, controlnet, settings.scheduler)
        size = (bundle.resolution, bundle.resolution)
        for n in (1, min(batch_size, len(items) * k)):  # warm-up, both batch shapes
            render(pipe, [items[0].text] * n, [depths[0]] * n, list(range(n)), size, settings)
        start = time.perf_counter()
        for item in items:
            for j in range(k):
                render(pipe, [item.text], [depths[item.index]], [negative_seed(0, item.relpath, j)], size, settings)
        per_image = time.perf_counter() - start
        start = time.perf_counter()
        result = generate_negatives(bundle, controlnet, root, depth_from_images(depths, len(items)), settings)
        batched = time.perf_counter() - start
    return NegativesBench(len(result.generated), batch_size, batched, per_image)


@dataclass
class RSCorrectorBench:
    images: int
    steps: int
    last_k: int
    m_steps: int
    plain_seconds: float
    corrected_seconds: float

    @property
    def extra_per_image(self) -> float:
        return (self.corrected_seconds - self.plain_seconds) / self.images

    def report(self) -> str:
        plain, corrected = self.plain_seconds / self.images, self.corrected_seconds / self.images
        return "\n".join([
            f"bench rscorrector (tiny model, 64 px, {self.images} images, DDIM {self.steps} steps, "
            f"K {self.last_k}, M {self.m_steps}, both losses; median of runs)",
            f"  plain sampling        {plain:.4f} s/image",
            f"  RS-Corrector          {corrected:.4f} s/image  ({corrected / plain:.2f}x)",
            f"  extra                 {self.extra_per_image:.4f} s/image",
        ])


def bench_rscorrector(images: int = 4, steps: int = 20, last_k: int = 4, m_steps: int = 2, repeats: int = 3,
                      threads: int = 2) -> RSCorrectorBench:
    """Seconds per image of plain sampling (`sample_tensor`) vs `sample_corrected`, same seeds and
    settings, one process; the prior is fitted briefly on the sample CCUB folder first (untimed)."""
    from .rscorrector import fit_prior, sample_corrected
    from .sampling import sample_tensor

    torch.set_num_threads(threads)
    bundle = load_tiny_model()
    prior = fit_prior(bundle, CCUB_DEMO_DIR, CCUB_DEMO_DIR / "negatives", steps=50, draws=4)
    prompts = [f"a house, view {i}" for i in range(images)]
    common = dict(steps=steps, cfg=5.0, batch_size=images)

    def timed(run) -> float:
        run()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    plain = timed(lambda: sample_tensor(bundle, prompts, 0, **common))
    corrected = timed(lambda: sample_corrected(bundle, prior, prompts, 0, last_k=last_k, m_steps=m_steps, **common))
    return RSCorrectorBench(images, steps, last_k, m_steps, plain, corrected)
