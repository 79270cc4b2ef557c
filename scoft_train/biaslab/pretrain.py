"""`biaslab pretrain`: build the world model, its depth ControlNet and the judge from a seed.

Stages: render the biased web corpus -> train the VAE -> cache latents -> train UNet +
text encoder jointly -> train the judge on VAE round-tripped renders -> train the
ControlNet -> sample every culture x concept and let the judge measure the bias ->
write the artefacts and the model card. After each training stage the weights are
rounded to fp16 (the shipped precision), so every number in the card is the shipped
model's. The output folder is assembled beside `out_dir` and renamed into place.

Layout written: world/ (a diffusers folder, `scoft_train.models.load_model` reads it),
controlnet/ (diffusers ControlNetModel), judge/ (config.json + model.safetensors),
model_card.json, MODEL_CARD.md.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch

from ..atomic import atomic_write_text
from ..judgenet import JudgeNet
from ..models import ModelBundle, load_clip_tokenizer
from ..progress import OnStep
from ..sampling import sample_tensor
from .arch import build_controlnet, build_world
from .corpus import balanced_specs, held_out_prompts, render_arrays, web_corpus
from .evaluate import bias_summary, judge_accuracy, judge_generated, labels_of, to_model_range
from .judge import HEADS
from .training import encode, round_trip, train_controlnet, train_denoiser, train_judge, train_vae
from .world import RESOLUTION

log = logging.getLogger(__name__)

CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"


@dataclass(frozen=True)
class PretrainConfig:
    """Sizes and budgets of every stage (defaults: the shipped run; `smoke()`: CI)."""

    seed: int = 0
    corpus_per_cell: int = 250  # web-corpus images per (culture, concept)
    vae_steps: int = 600
    vae_batch: int = 32
    vae_lr: float = 1e-3
    denoiser_steps: int = 3000
    denoiser_batch: int = 32
    denoiser_lr: float = 1e-3
    cond_drop: float = 0.1
    judge_images: int = 4000
    judge_held_out: int = 1000
    judge_steps: int = 600
    judge_batch: int = 64
    judge_lr: float = 2e-3
    controlnet_steps: int = 250
    controlnet_batch: int = 32
    controlnet_lr: float = 5e-4
    samples_per_prompt: int = 5  # x 8 prompts per culture = 40 samples per culture
    sample_steps: int = 20
    cfg: float = 5.0

    @classmethod
    def smoke(cls, seed: int = 0) -> PretrainConfig:
        """A few steps of every stage: proves the code path, trains nothing useful."""
        return cls(seed=seed, corpus_per_cell=3, vae_steps=3, vae_batch=8, denoiser_steps=3, denoiser_batch=8,
                   judge_images=40, judge_held_out=20, judge_steps=3, judge_batch=8, controlnet_steps=2,
                   controlnet_batch=8, samples_per_prompt=1, sample_steps=2)


@dataclass(frozen=True)
class PretrainResult:
    out_dir: Path
    card: dict


def fp16_round(*modules: torch.nn.Module) -> None:
    """Round every parameter and buffer to fp16 and back, in place (the shipped precision)."""
    with torch.no_grad():
        for module in modules:
            for tensor in list(module.parameters()) + list(module.buffers()):
                if tensor.is_floating_point():
                    tensor.copy_(tensor.half().float())


def _final(history: list[dict], window: int = 50) -> float:
    tail = [entry["loss"] for entry in history[-window:]]
    return sum(tail) / len(tail)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    return float(10 * torch.log10(4 / ((a - b) ** 2).mean()))


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class _Clock:
    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round(now - self.last, 1)
        self.last = now
        log.info("stage %s done in %.1f s", stage, self.stages[stage])


def pretrain(out_dir: str | os.PathLike, config: PretrainConfig = PretrainConfig(), device: str = "cpu",
             on_step: OnStep | None = None) -> PretrainResult:
    """Train the three artefacts, measure them, write them to `out_dir` (replaced whole)."""
    out_dir = Path(out_dir)
    clock, c = _Clock(), config
    corpus = web_corpus(c.corpus_per_cell, c.seed)
    specs = [example.spec for example in corpus]
    images_u8, depth_u8 = render_arrays(specs)
    images = to_model_range(images_u8).to(device)
    depth = (torch.from_numpy(depth_u8)[:, None].float() / 255).expand(-1, 3, -1, -1).contiguous().to(device)
    world = build_world(c.seed)
    unet, vae, text_encoder = (world[k].to(device) for k in ("unet", "vae", "text_encoder"))
    clock.lap("render_corpus")

    vae_history = train_vae(vae, images, c.vae_steps, c.vae_batch, c.vae_lr, c.seed, on_step)
    fp16_round(vae)
    latents = encode(vae, images)
    spread = float((latents[0].var() + latents[1].pow(2).mean()).sqrt())
    vae.register_to_config(scaling_factor=1.0 / spread)
    clock.lap("vae")

    tokenizer = load_clip_tokenizer()
    captions = sorted({example.caption for example in corpus})
    ids = tokenizer(captions + [""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    caption_index = torch.tensor([captions.index(example.caption) for example in corpus])
    denoiser_history = train_denoiser(
        unet, text_encoder, world["scheduler"], latents, ids[caption_index], ids[-1], vae.config.scaling_factor,
        c.denoiser_steps, c.denoiser_batch, c.denoiser_lr, c.cond_drop, c.seed + 1, on_step,
    )
    fp16_round(unet, text_encoder)
    clock.lap("denoiser")

    judge_specs, held_specs = balanced_specs(c.judge_images, c.seed + 2), balanced_specs(c.judge_held_out, c.seed + 3)
    judge_clean = to_model_range(render_arrays(judge_specs)[0]).to(device)
    held_clean = to_model_range(render_arrays(held_specs)[0]).to(device)
    judge_images, held_images = round_trip(vae, judge_clean), round_trip(vae, held_clean)
    judge = JudgeNet(HEADS).to(device)
    judge_history = train_judge(judge, judge_images, {k: v.to(device) for k, v in labels_of(judge_specs).items()},
                                c.judge_steps, c.judge_batch, c.judge_lr, c.seed + 4, on_step)
    fp16_round(judge)
    accuracy = judge_accuracy(judge, held_images, {k: v.to(device) for k, v in labels_of(held_specs).items()})
    clean_accuracy = judge_accuracy(judge, held_clean, {k: v.to(device) for k, v in labels_of(held_specs).items()})
    log.info("judge held-out accuracy (VAE round trip): %s; on clean renders: %s", accuracy, clean_accuracy)
    clock.lap("judge")

    with torch.no_grad():
        embeddings = text_encoder(ids.to(device))[0]
    controlnet = build_controlnet(unet, c.seed + 5).to(device)
    controlnet_history = train_controlnet(
        controlnet, unet, world["scheduler"], latents, depth, embeddings, caption_index.to(device), len(captions),
        vae.config.scaling_factor, c.controlnet_steps, c.controlnet_batch, c.controlnet_lr, c.cond_drop,
        c.seed + 6, on_step,
    )
    fp16_round(controlnet)
    clock.lap("controlnet")

    bundle = ModelBundle(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                         scheduler=world["scheduler"], source="biaslab-pretrain", fingerprint=f"seed{c.seed}")
    bias = measure_bias(bundle, judge, c.samples_per_prompt, c.sample_steps, c.cfg, seed=c.seed + 7)
    clock.lap("measure_bias")

    card = {
        "name": "SCoFT bias-lab world model",
        "seed": c.seed,
        "config": dataclasses.asdict(c),
        "resolution": RESOLUTION,
        "data": {
            "web_corpus_images": len(corpus),
            "web_corpus_stereotype_share": _shares(corpus),
            "web_corpus_generic_captions": sum(example.generic for example in corpus),
            "distinct_captions": len(captions),
            "judge_train_images": len(judge_specs),
            "judge_held_out_images": len(held_specs),
        },
        "parameters": {"vae": _count(vae), "unet": _count(unet), "text_encoder": _count(text_encoder),
                       "controlnet": _count(controlnet), "judge": _count(judge)},
        "steps": {"vae": c.vae_steps, "denoiser": c.denoiser_steps, "judge": c.judge_steps,
                  "controlnet": c.controlnet_steps},
        "final_losses": {"vae": _final(vae_history), "denoiser": _final(denoiser_history),
                         "judge": _final(judge_history), "controlnet": _final(controlnet_history)},
        "vae_psnr_db": _psnr(held_images, held_clean),
        "vae_scaling_factor": vae.config.scaling_factor,
        "judge_accuracy_vae_round_trip": accuracy,
        "judge_accuracy_clean": clean_accuracy,
        "base_model_bias": bias,
        "sampling": {"scheduler": "ddim", "steps": c.sample_steps, "cfg": c.cfg},
        "wall_time_s": {**clock.stages, "total": round(time.perf_counter() - clock.start, 1)},
        "environment": {"device": str(device), "torch": torch.__version__, "diffusers": diffusers.__version__,
                        "python": platform.python_version(), "threads": torch.get_num_threads()},
    }
    _write(out_dir, bundle, controlnet, judge, card)
    return PretrainResult(out_dir, card)


def _shares(corpus) -> dict[str, float]:
    """Share of stereotype renderings per culture in the web corpus."""
    total, stereo = Counter(), Counter()
    for example in corpus:
        total[example.spec.culture] += 1
        stereo[example.spec.culture] += int(example.spec.stereotype)
    return {name: round(stereo[name] / total[name], 3) for name in total}


def measure_bias(bundle: ModelBundle, judge: JudgeNet, samples_per_prompt: int, steps: int, cfg: float,
                 seed: int = 0) -> dict:
    """Sample every held-out prompt `samples_per_prompt` times and summarise the judge's verdicts."""
    rows = [row for row in held_out_prompts() for _ in range(samples_per_prompt)]
    pixels = sample_tensor(bundle, [r[0] for r in rows], seed, steps=steps, cfg=cfg, batch_size=64)
    images = pixels.permute(0, 3, 1, 2).to(bundle.device) * 2 - 1
    return bias_summary(judge_generated(judge, images, [r[1] for r in rows], [r[2] for r in rows]))


def _write(out_dir: Path, bundle: ModelBundle, controlnet, judge: JudgeNet, card: dict) -> None:
    """Assemble the folder beside `out_dir`, then swap it into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        pipe = dataclasses.replace(
            bundle, unet=_half_copy(bundle.unet), vae=_half_copy(bundle.vae), text_encoder=_half_copy(bundle.text_encoder)
        ).pipeline()
        pipe.save_pretrained(staging / "world", safe_serialization=True)
        _half_copy(controlnet).save_pretrained(staging / "controlnet", safe_serialization=True)
        judge.save(staging / "judge", {"trained_on": "VAE round-tripped renders of the bias-lab world"})
        sizes = {p.relative_to(staging).as_posix(): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file()}
        card["files_bytes"] = {"total": sum(sizes.values()), **sizes}
        atomic_write_text(staging / CARD_JSON, json.dumps(card, indent=2) + "\n")
        atomic_write_text(staging / CARD_MD, model_card_markdown(card))
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(staging, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("bias-lab artefacts written to %s (%.1f MB)", out_dir, card["files_bytes"]["total"] / 1e6)


def _half_copy(module: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(module).to("cpu", torch.float16)


def model_card_markdown(card: dict) -> str:
    """The model card as markdown (the same numbers as model_card.json)."""
    bias = card["base_model_bias"]
    lines = [
        f"# {card['name']}",
        "",
        "A Stable Diffusion 1.x-architecture model of an invented world (five invented cultures, four concepts), "
        "pretrained on a deliberately biased web corpus, with its depth ControlNet and a judge. "
        "Reproduce with `python -m scoft_train biaslab pretrain --seed "
        f"{card['seed']}`.",
        "",
        "## Data",
        f"- web corpus: {card['data']['web_corpus_images']} images at {card['resolution']} px, "
        f"{card['data']['distinct_captions']} distinct captions",
        "- stereotype share per culture: " + ", ".join(f"{k} {v:.2f}" for k, v in card["data"]["web_corpus_stereotype_share"].items()),
        f"- judge: {card['data']['judge_train_images']} training / {card['data']['judge_held_out_images']} held-out renders",
        "",
        "## Training",
        "| stage | parameters | steps | final loss | wall time (s) |",
        "|---|---|---|---|---|",
    ]
    params, steps, losses, wall = card["parameters"], card["steps"], card["final_losses"], card["wall_time_s"]
    for stage, modules in (("vae", ("vae",)), ("denoiser", ("unet", "text_encoder")), ("judge", ("judge",)),
                           ("controlnet", ("controlnet",))):
        count = " + ".join(f"{params[m] / 1e6:.2f}M" for m in modules)
        lines.append(f"| {stage} | {count} | {steps[stage]} | {losses[stage]:.4f} | {wall[stage]} |")
    lines += [
        f"\nTotal wall time {wall['total']} s on {card['environment']['device']} "
        f"({card['environment']['threads']} threads). VAE round-trip PSNR {card['vae_psnr_db']:.1f} dB.",
        "",
        "## Judge accuracy (held-out renders)",
        "| head | VAE round trip | clean |",
        "|---|---|---|",
        *(f"| {head} | {acc:.3f} | {card['judge_accuracy_clean'][head]:.3f} |"
          for head, acc in card["judge_accuracy_vae_round_trip"].items()),
        "",
        f"## Base model bias (judge; DDIM {card['sampling']['steps']} steps, cfg {card['sampling']['cfg']})",
        "| culture | samples | stereotype rate | cultural relevance | description fidelity |",
        "|---|---|---|---|---|",
    ]
    for name, n in bias["samples_per_culture"].items():
        lines.append(f"| {name} | {n} | {bias['stereotype']['per_culture'][name]:.2f} | "
                     f"{bias['relevant']['per_culture'][name]:.2f} | {bias['faithful']['per_culture'][name]:.2f} |")
    lines += [
        f"| minority (3) | | {bias['stereotype']['minority']:.2f} | {bias['relevant']['minority']:.2f} | "
        f"{bias['faithful']['minority']:.2f} |",
        "",
        f"Files: {card['files_bytes']['total'] / 1e6:.1f} MB (fp16 safetensors).",
        "",
    ]
    if "scorers" in card:
        lines += scorers_markdown(card["scorers"])
    return "\n".join(lines)


def scorers_markdown(scorers: dict) -> list[str]:
    """The model card's section on `biaslab scorers` (scorers_card.json's numbers)."""
    judge, rules, ssl = scorers["second_judge"], scorers["rules"], scorers["ssl"]
    return [
        "## Independent scorers and the label-free encoder (`python -m scoft_train biaslab scorers`)",
        "- second judge (another architecture, seed and data draw; a scorer only, no loss loads it): held-out "
        "accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in judge["held_out_accuracy_vae_round_trip"].items())
        + f"; {judge['parameters'] / 1e3:.0f}k parameters, {judge['train_images']} training images",
        f"- rule-based scorer (the world's palettes; max residual {rules['max_residual']:g}, stereotype share "
        f"{rules['stereotype_share']:g}): on fresh round-tripped renders, stereotype balanced accuracy "
        f"{rules['accuracy_fresh_renders']['stereotype_balanced_accuracy']:.3f}, signature accuracy (authentic) "
        f"{rules['accuracy_fresh_renders']['signature_accuracy_authentic']:.3f}",
        f"- label-free encoder (SimCLR on {ssl['corpus_images']} web-corpus images, labels read: {ssl['labels_read']}; "
        f"{ssl['parameters'] / 1e3:.0f}k parameters, final loss {ssl['final_loss']:.3f}): the feature space of the "
        "ablation's headline L_P / L_C rows (backbone `biaslab-ssl`), never a scorer",
        "",
    ]
