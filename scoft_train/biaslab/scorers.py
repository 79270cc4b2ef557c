"""`biaslab scorers`: the artefacts that keep the ablation honest, trained from their own
seeds and data draws, never from the ablation's training losses.

- `second_judge/`: the independent judge (second_judge.py), a scorer only.
- `rules.json`: the rule-based scorer's calibrated thresholds (rules.py), with its
  calibration and its accuracy on a separate fresh draw.
- `ssl/`: the label-free encoder (ssl.py), the feature space of the headline L_P / L_C
  rows (backbone `biaslab-ssl`). It is a training input, never a scorer.
- `scorers_card.json`: data sizes, seeds, steps, accuracies, wall times.

Which network may be loaded by what is the independence rule: `SCORER_DIRS` lists the
scorers' folders, and `check_independent` refuses a training config whose feature
backbone points into one of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..assets import WEIGHTS_DIR
from ..atomic import atomic_write_text
from ..progress import OnStep
from .artefacts import load_world
from .corpus import balanced_specs, render_arrays, web_corpus
from .evaluate import judge_accuracy, labels_of, to_model_range
from .judge import HEADS
from .pretrain import CARD_JSON, CARD_MD, model_card_markdown
from .rules import calibrate, rule_accuracy
from .second_judge import SecondJudge
from .ssl import train_ssl_encoder
from .training import round_trip, train_judge

SECOND_JUDGE = "second_judge"
RULES = "rules.json"
SSL = "ssl"
CARD = "scorers_card.json"
SCORER_NAMES = ("judge", SECOND_JUDGE, RULES)  # every network or file that scores the ablation


@dataclass(frozen=True)
class ScorersConfig:
    seed: int = 100  # far from the pretraining seeds (0..7)
    judge_images: int = 3000
    judge_held_out: int = 1000
    judge_steps: int = 700
    judge_batch: int = 64
    judge_lr: float = 2e-3
    rule_images: int = 400  # calibration draw, and as many again for the accuracy
    ssl_corpus_per_cell: int = 100  # web-corpus images per (culture, concept), labels unread
    ssl_steps: int = 500
    ssl_batch: int = 128  # images per step (two views each)
    ssl_lr: float = 2e-3
    ssl_width: int = 16

    @classmethod
    def smoke(cls, seed: int = 100) -> ScorersConfig:
        return cls(seed=seed, judge_images=40, judge_held_out=20, judge_steps=3, judge_batch=8, rule_images=20,
                   ssl_corpus_per_cell=2, ssl_steps=3, ssl_batch=8)


def scorer_dirs(weights_dir: str | os.PathLike = WEIGHTS_DIR) -> list[Path]:
    return [Path(weights_dir) / name for name in SCORER_NAMES]


def check_independent(configs: dict[str, object], weights_dir: str | os.PathLike = WEIGHTS_DIR,
                      allowed: tuple[str, ...] = ()) -> None:
    """Raise if a training config (row -> TrainConfig) reads a scorer as its feature space,
    except the rows named in `allowed` (labelled circular in the results)."""
    scorers = [p.resolve() for p in scorer_dirs(weights_dir)]
    for row, config in configs.items():
        if row in allowed:
            continue
        for role in ("perceptual", "contrastive"):
            backbone, weights = getattr(config, f"{role}_backbone"), getattr(config, f"{role}_weights")
            path = Path(weights).resolve() if weights else None
            if backbone == "biaslab-judge" and weights is None or path is not None and any(
                    path == s or s in path.parents for s in scorers):
                raise ValueError(f"row {row!r}: the {role} loss reads a scoring network ({backbone}, "
                                 f"{weights or 'the shipped judge'}); a loss must never load the evaluator")


def _round_tripped(vae, specs) -> torch.Tensor:
    return round_trip(vae, to_model_range(render_arrays(specs)[0]))


def train_scorers(out_dir: str | os.PathLike = WEIGHTS_DIR, config: ScorersConfig = ScorersConfig(),
                  weights_dir: str | os.PathLike = WEIGHTS_DIR, on_step: OnStep | None = None) -> dict:
    """Train and calibrate into `out_dir`; returns the card."""
    out_dir, c = Path(out_dir), config
    start, lap = time.perf_counter(), {}
    vae = load_world(weights_dir).vae

    tick = time.perf_counter()
    specs, held = balanced_specs(c.judge_images, c.seed + 1), balanced_specs(c.judge_held_out, c.seed + 2)
    images, held_images = _round_tripped(vae, specs), _round_tripped(vae, held)
    labels = labels_of(specs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed + 3)
        judge = SecondJudge(HEADS)
    flipped = torch.cat([images, images.flip(-1)])
    history = train_judge(judge, flipped, {k: torch.cat([v, v]) for k, v in labels.items()}, c.judge_steps,
                          c.judge_batch, c.judge_lr, c.seed + 4, on_step)
    judge.save(out_dir / SECOND_JUDGE, {"seed": c.seed})
    judge_acc = judge_accuracy(judge, held_images, labels_of(held))
    lap["second_judge"] = time.perf_counter() - tick

    tick = time.perf_counter()
    calib, check = balanced_specs(c.rule_images, c.seed + 5), balanced_specs(c.rule_images, c.seed + 6)
    scorer, grid = calibrate(_round_tripped(vae, calib), torch.tensor([s.stereotype for s in calib]),
                             [s.culture for s in calib])
    rules_acc = rule_accuracy(scorer, _round_tripped(vae, check), torch.tensor([s.stereotype for s in check]),
                              [s.culture for s in check])
    scorer.save(out_dir / RULES, {"calibration_images": len(calib), "accuracy_images": len(check),
                                  "accuracy": rules_acc, **grid})
    lap["rules"] = time.perf_counter() - tick

    tick = time.perf_counter()
    corpus = [example.spec for example in web_corpus(c.ssl_corpus_per_cell, c.seed + 7)]
    encoder, ssl_history = train_ssl_encoder(_round_tripped(vae, corpus), c.ssl_steps, c.ssl_batch, c.ssl_lr,
                                             c.seed + 8, c.ssl_width, on_step)
    encoder.save(out_dir / SSL, {"trained": "SimCLR on web-corpus images, no labels (scoft_train/biaslab/ssl.py)",
                                 "seed": c.seed + 8})
    lap["ssl"] = time.perf_counter() - tick

    card = {
        "config": dataclasses.asdict(c),
        "second_judge": {"held_out_accuracy_vae_round_trip": judge_acc, "train_images": len(specs) * 2,
                         "final_loss": sum(h["loss"] for h in history[-50:]) / len(history[-50:]),
                         "parameters": sum(p.numel() for p in judge.parameters())},
        "rules": {"max_residual": scorer.max_residual, "stereotype_share": scorer.stereotype_share,
                  "accuracy_fresh_renders": rules_acc},
        "ssl": {"corpus_images": len(corpus), "labels_read": "none",
                "final_loss": sum(h["loss"] for h in ssl_history[-50:]) / len(ssl_history[-50:]),
                "parameters": sum(p.numel() for p in encoder.parameters())},
        "wall_time_s": {**{k: round(v, 1) for k, v in lap.items()}, "total": round(time.perf_counter() - start, 1)},
    }
    atomic_write_text(out_dir / CARD, json.dumps(card, indent=2) + "\n")
    world_card = out_dir / CARD_JSON
    if world_card.is_file():  # the world's model card records them too
        record = json.loads(world_card.read_text()) | {"scorers": card}
        atomic_write_text(world_card, json.dumps(record, indent=2) + "\n")
        atomic_write_text(out_dir / CARD_MD, model_card_markdown(record))
    return card
