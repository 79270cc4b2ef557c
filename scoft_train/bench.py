"""`python -m scoft_train bench train`: plain LoRA step vs SCoFT (FT+MPC) steps, side by side.

Both run in one process on the embedded tiny model (or, `sd15`, the full SD 1.5 architecture
with random weights) and the sample CCUB folder. The variants run in rounds of one step each
(warm-up rounds, then timed ones), so drift in the machine's speed reaches all alike; each
gets the median of its timed optimizer steps (grad_accum 1).
The SCoFT step is timed without the decoded-generation branch and with it, once per
branch length S, and likewise without L_M (weight 0: its no-grad UNet call is skipped); the
amortised cost of a branch setting (S, every N) spreads its branch step over N steps as
training does. The breakdown splits the reference branch step into
UNet calls with and without grad, decode, features and backward.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from .config import BRANCH_SETTINGS, BranchSetting, LossWeights, TrainConfig
from .data import load_ccub
from .models import load_tiny_model
from .sample_data import CCUB_DEMO_DIR
from .trainer import SCoFTTrainer


# branch settings timed: name -> (S, every N, with L_M?, guidance scale or None for the default 4.5)
BRANCH_POINTS = {
    "reference (paper)": BRANCH_SETTINGS["reference"],
    "fast (train --fast)": BRANCH_SETTINGS["fast"],
    "S=4, with L_M": BranchSetting(4, 10),
    "S=3, no L_M": BranchSetting(3, 10, memorization=False),
    "S=4, no L_M, cfg 1": BranchSetting(4, 10, memorization=False, cfg=1.0),
    "S=1, every 10": BranchSetting(1, 10),
    "S=1, every 20": BranchSetting(1, 20),
}


def _branch_key(point: BranchSetting) -> tuple[int, bool, float | None]:
    """What a branch step's time depends on: (S, with L_M?, guidance scale)."""
    return point.denoise_steps, point.memorization, point.cfg


@dataclass
class TrainBench:
    model: str  # what was timed: "tiny model, 64 px, cpu" or "SD 1.5 architecture, ..., 128 px, cpu"
    plain: float
    no_branch: dict[bool, float]  # with L_M? -> seconds of an FT+MPC step without the branch
    branch: dict[tuple[int, bool, float | None], float]  # _branch_key -> seconds of a step with the branch
    breakdown: dict[str, float] = field(default_factory=dict)

    def amortised(self, point: str) -> float:
        """Seconds per step of FT+MPC at BRANCH_POINTS[point], the branch spread over its N steps."""
        setting = BRANCH_POINTS[point]
        every = setting.contrastive_every
        return (self.branch[_branch_key(setting)] + (every - 1) * self.no_branch[setting.memorization]) / every

    def report(self) -> str:
        def step(name: str, seconds: float) -> str:
            return f"  {name:<38} {seconds:.4f} s  ({seconds / self.plain:.2f}x)"

        lines = [
            f"bench train ({self.model}, batch 1, median seconds per optimizer step)",
            f"  {'plain LoRA step (FT)':<38} {self.plain:.4f} s",
            *(step(f"FT+MPC step without branch{'' if m else ', no L_M'}", t) for m, t in
              sorted(self.no_branch.items(), reverse=True)),
            *(step(f"FT+MPC step with branch, S={s}{'' if m else ', no L_M'}{'' if cfg is None else f', cfg {cfg:g}'}",
                   t) for (s, m, cfg), t in self.branch.items()),
            "  FT+MPC amortised, per branch setting (S denoise steps, branch every N steps):",
            *(f"    {name:<22} S={s:<3} N={n:<3} {self.amortised(name):.4f} s  "
              f"({self.amortised(name) / self.plain:.2f}x plain)" for name, (s, n, *_) in BRANCH_POINTS.items()),
            "  where a reference branch step's time goes:",
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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_step(trainer: SCoFTTrainer, branch: bool, denoise_steps: int = 20, cfg: float | None = None) -> float:
    """Seconds of one optimizer step of `trainer`, with the decoded-generation branch (S = `denoise_steps`,
    guidance `cfg`, None: the default) or without it."""
    trainer.config = dataclasses.replace(trainer.config, contrastive_every=1 if branch else 1_000_000,
                                         denoise_steps=denoise_steps, cfg=TrainConfig.cfg if cfg is None else cfg)
    trainer.step = 0 if branch else 1  # step 1 never runs the branch at the largest contrastive_every
    _synchronize(trainer.device)
    start = time.perf_counter()
    trainer.train_step()
    _synchronize(trainer.device)
    return time.perf_counter() - start


def _interleaved_medians(variants: dict, steps: int, warmup: int) -> dict:
    """{key: median seconds} of `variants` ({key: a zero-argument timed step}), run in rounds of one step each,
    so that drift in the machine's speed (allocator warm-up, other load) reaches every variant alike."""
    times: dict = defaultdict(list)
    for round_index in range(warmup + steps):
        for key, run in variants.items():
            seconds = run()
            if round_index >= warmup:
                times[key].append(seconds)
    return {key: statistics.median(values) for key, values in times.items()}


def bench_train(steps: int = 5, warmup: int = 2, threads: int = 2, sd15: bool = False, resolution: int | None = None,
                device: str = "cpu") -> TrainBench:
    """`sd15`: the full SD 1.5 architecture with random weights at `resolution` (default 128 on CPU, 512 on
    CUDA) instead of the tiny model at its 64 px; the losses' networks are the real architectures too (LPIPS
    on a random VGG16 trunk), so the ratios are those of a real-size step, up to the weights' values."""
    if resolution is not None and not sd15:
        raise ValueError("bench train: --resolution applies to --sd15 only (the tiny model is 64 px)")
    torch.set_num_threads(threads)
    if sd15:
        bundle = random_sd15_bundle(device=device)
        resolution = resolution or (128 if torch.device(device).type == "cpu" else 512)
        model = f"SD 1.5 architecture, random weights, {resolution} px, {device}"
    else:
        bundle = load_tiny_model(device=device)
        resolution = bundle.resolution
        model = f"tiny model, {resolution} px, {device}"
    dataset = load_ccub(CCUB_DEMO_DIR, resolution=resolution)
    common = dict(steps=10**6, grad_accum=1, rank=8, alpha=8.0, allow_random_backbone=True, lr_schedule="constant")
    plain = SCoFTTrainer(bundle, dataset, TrainConfig(preset="FT", **common))
    scoft = {memorization: SCoFTTrainer(bundle, dataset, TrainConfig(
        preset="FT+MPC", weights=LossWeights() if memorization else dataclasses.replace(LossWeights(), mem=0.0),
        **common)) for memorization in (True, False)}
    branch_steps = sorted({_branch_key(p) for p in BRANCH_POINTS.values()},
                          key=lambda key: (not key[1], key[2] is not None, -key[0]))
    for trainer in (plain, *scoft.values()):
        trainer.warm_caches()
    variants = {
        "plain": functools.partial(_timed_step, plain, False),
        **{("no branch", m): functools.partial(_timed_step, scoft[m], False) for m in (True, False)},
        **{(s, m, cfg): functools.partial(_timed_step, scoft[m], True, s, cfg) for s, m, cfg in branch_steps},
    }
    medians = _interleaved_medians(variants, steps, warmup)
    result = TrainBench(model=model, plain=medians["plain"],
                        no_branch={m: medians["no branch", m] for m in (True, False)},
                        branch={key: medians[key] for key in branch_steps})
    reference_steps = BRANCH_POINTS["reference (paper)"].denoise_steps
    scoft = scoft[True]
    timings: dict[str, float] = defaultdict(float)
    scoft.timings, scoft.profile = timings, True
    timer = _UNetTimer(scoft.unet, timings)
    for _ in range(steps):
        _timed_step(scoft, branch=True, denoise_steps=reference_steps)
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


# ------------------------------------------------------------------------------ memory
MEMORY_STEPS = {"FT": "FT", "FT+MPC branch": "FT+MPC"}  # row name -> preset (the branch step is forced)
MEMORY_COLUMNS = ("step", "checkpointing", "precision", "before step", "peak", "step adds", "seconds")


def random_sd15_bundle(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """The full SD 1.5 architecture (UNet 860M, VAE 84M, CLIP ViT-L/14 text 123M parameters)
    with random weights, from the configs shipped in scoft_train/configs/sd15: no download."""
    import json

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .models import BUNDLED_CONFIGS, ModelBundle, _freeze, load_clip_tokenizer

    folder = BUNDLED_CONFIGS["sd15"]
    read = lambda part, name="config.json": json.loads((folder / part / name).read_text())  # noqa: E731
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(read("unet"))
        vae = AutoencoderKL.from_config(read("vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(read("text_encoder")))
    bundle = ModelBundle(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=load_clip_tokenizer(),
        scheduler=DDPMScheduler.from_config(read("scheduler", "scheduler_config.json")),
        source="random-sd15", fingerprint="random-sd15", extras={"layout": "random", "config": "sd15"},
    )
    _freeze(bundle, dtype, device)
    return bundle


def _rss_now() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident set (Linux /proc/self/clear_refs, VmHWM); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss(reset: bool) -> int:
    if reset:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def measure_memory_step(step: str, checkpointing: bool, precision: str, resolution: int, tiny: bool,
                        device: str = "cpu", threads: int = 1, denoise_steps: int = 2) -> dict:
    """Memory of one optimizer step (batch 1, grad_accum 1, rank 64) of `step` ("FT" or "FT+MPC
    branch", the decoded-generation branch forced on) in this process: the model, the trainer
    (LoRA layers on a UNet copy that shares the model's weights) and the caches are built and
    warmed first. CPU: resident set before the step and its peak during the step (VmHWM reset
    just before); CUDA: allocated before and torch.cuda.max_memory_allocated during. Bytes,
    and the step's seconds."""
    torch.set_num_threads(threads)
    bundle = load_tiny_model(device=device) if tiny else random_sd15_bundle(device=device)
    dataset = load_ccub(CCUB_DEMO_DIR, resolution=resolution)
    config = TrainConfig(preset=MEMORY_STEPS[step], steps=10, grad_accum=1, batch_size=1, allow_random_backbone=True,
                         gradient_checkpointing=checkpointing, mixed_precision=precision, contrastive_every=1,
                         denoise_steps=denoise_steps, lr_schedule="constant")
    trainer = SCoFTTrainer(bundle, dataset, config)
    if step == "FT":
        trainer.step = 1  # (FT has no branch anyway)
    trainer.warm_caches()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        reset = False
    else:
        import gc

        gc.collect()
        before = _rss_now()
        reset = _reset_peak_rss()
    start = time.perf_counter()
    trainer.train_step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss(reset)
    return {"step": step, "checkpointing": checkpointing, "precision": precision, "before": before,
            "peak": max(peak, before), "seconds": seconds,
            "measure": "cuda max_memory_allocated" if cuda else ("VmHWM (reset before the step)" if reset
                                                                 else "ru_maxrss (whole process)")}


@dataclass
class MemoryBench:
    model: str
    resolution: int
    device: str
    rows: list[dict]

    def report(self) -> str:
        gib = 1024**3
        measure = self.rows[0]["measure"] if self.rows else "-"
        lines = [
            f"bench memory ({self.model}, random weights, {self.resolution} px, batch 1, rank 64, {self.device}; "
            f"one optimizer step per row, each in a fresh process)",
            f"  memory: {measure}; 'before step' = model + trainer (LoRA, weight-sharing UNet copy) + caches, GiB",
            "  " + "  ".join(f"{c:<14}" if i < 3 else f"{c:>11}" for i, c in enumerate(MEMORY_COLUMNS)),
        ]
        for r in self.rows:
            cells = [r["step"], "on" if r["checkpointing"] else "off", r["precision"] if r["precision"] != "no"
                     else "fp32"]
            numbers = [r["before"] / gib, r["peak"] / gib, (r["peak"] - r["before"]) / gib]
            lines.append("  " + "  ".join(f"{c:<14}" for c in cells) + "  "
                         + "  ".join(f"{v:>11.2f}" for v in numbers) + f"  {r['seconds']:>11.3f}")
        return "\n".join(lines)


def memory_configurations(device: str) -> list[tuple[str, bool, str]]:
    """(step, checkpointing, precision) rows: fp32 everywhere, bf16 autocast where CUDA allows it."""
    precisions = ["no"] + (["bf16"] if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported() else [])
    return [(step, ckpt, precision) for precision in precisions for step in MEMORY_STEPS for ckpt in (False, True)]


def bench_memory(resolution: int | None = None, tiny: bool = False, device: str = "cpu", threads: int = 1,
                 denoise_steps: int = 2) -> MemoryBench:
    """Every configuration of `memory_configurations` in a fresh `python -m scoft_train bench memory
    --one ...` process, so that no peak carries over from one row to the next."""
    import json
    import subprocess
    import sys

    resolution = resolution or (64 if tiny else 256 if torch.device(device).type == "cpu" else 512)
    rows = []
    for step, checkpointing, precision in memory_configurations(device):
        command = [sys.executable, "-m", "scoft_train", "bench", "memory", "--one", step, "--resolution",
                   str(resolution), "--device", device, "--threads", str(threads), "--denoise-steps",
                   str(denoise_steps), "--precision", precision, "--checkpointing" if checkpointing else
                   "--no-checkpointing", *(["--tiny"] if tiny else [])]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"bench memory row {step!r} failed:\n{result.stderr[-3000:]}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return MemoryBench("tiny SD-1.x model" if tiny else "SD 1.5 architecture", resolution, device, rows)


# ------------------------------------------------------------------------- processes
@dataclass
class DistributedBench:
    rows: list[dict]  # processes, batch, steps, seconds, lora path
    max_lora_difference: float

    def report(self) -> str:
        base = self.rows[0]["steps"] / self.rows[0]["seconds"]
        lines = [
            "bench distributed (tiny model, FT+M, global batch {}, 1 CPU thread per process, gloo; median-free: "
            "steps timed after warm-up)".format(self.rows[0]["batch"]),
            "  processes   steps/s   vs 1 process",
        ]
        for r in self.rows:
            rate = r["steps"] / r["seconds"]
            lines.append(f"  {r['processes']:>9}   {rate:7.2f}   {rate / base:5.2f}x")
        lines.append(f"  largest |LoRA(2 processes) - LoRA(1 process)| after the same steps: {self.max_lora_difference:.2e}")
        lines.append("  On a machine with 2 shared cores this shows correctness, not speed-up: the processes share "
                     "the cores and add an all-reduce per step.")
        return "\n".join(lines)


def distributed_worker(steps: int, warmup: int, batch_size: int, lora_out: str, threads: int = 1) -> dict | None:
    """One training process of `bench distributed`: the tiny model, global batch `batch_size`;
    rank 0 returns the timing and writes the LoRA state to `lora_out`."""
    from safetensors.torch import save_file

    from . import distributed

    torch.set_num_threads(threads)
    processes, _ = distributed.start("cpu")
    bundle = load_tiny_model()
    dataset = load_ccub(CCUB_DEMO_DIR, resolution=bundle.resolution)
    config = TrainConfig(preset="FT+M", steps=10**6, grad_accum=1, batch_size=batch_size, rank=8, alpha=8.0,
                         lr=1e-3, lr_schedule="constant")
    trainer = SCoFTTrainer(bundle, dataset, config)
    trainer.warm_caches()
    for _ in range(warmup):
        trainer.train_step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    seconds = time.perf_counter() - start
    if processes.is_main:
        save_file({k: v.contiguous() for k, v in trainer._lora_state().items()}, lora_out)
    distributed.finish(processes)
    if not processes.is_main:
        return None
    return {"processes": processes.world_size, "batch": batch_size, "steps": steps, "seconds": seconds}


def bench_distributed(steps: int = 10, warmup: int = 2, batch_size: int = 4, processes: tuple[int, ...] = (1, 2),
                      threads: int = 1) -> DistributedBench:
    """Steps/s of the same training with 1 and with N processes (accelerate's launcher, gloo), each
    run in fresh processes; and how far apart their LoRAs end (they should be equal)."""
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from safetensors.torch import load_file

    from .distributed import relaunch_command

    rows, loras = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in processes:
            lora = str(Path(tmp) / f"lora_{n}.safetensors")
            argv = ["bench", "distributed", "--worker", "--steps", str(steps), "--warmup", str(warmup),
                    "--batch-size", str(batch_size), "--lora-out", lora, "--threads", str(threads)]
            command = relaunch_command(n, argv) if n > 1 else [sys.executable, "-m", "scoft_train", *argv]
            result = subprocess.run(command, capture_output=True, text=True, env={**__import__("os").environ,
                                                                                   "OMP_NUM_THREADS": str(threads)})
            if result.returncode != 0:
                raise RuntimeError(f"bench distributed with {n} processes failed:\n{result.stderr[-3000:]}")
            rows.append(json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1]))
            loras.append(load_file(lora))
    difference = max(float((loras[0][k] - other[k]).abs().max()) for other in loras[1:] for k in loras[0]) \
        if len(loras) > 1 else 0.0
    return DistributedBench(rows, difference)
