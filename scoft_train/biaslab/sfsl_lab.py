"""`biaslab sfsl`: SFSL measured in the bias lab over several training seeds, read by two classifiers.

1. Write the references (the awning over empty scenes, `spurious.reference_specs`) and
   generate the class images of "a photo of a market" with the frozen world model. Both
   are the same for every training seed (`data_seed`).
2. For every training seed, train two LoRAs (UNet + text encoder) with that seed and
   the same steps and data: DreamBooth (instance + prior preservation) and DreamBooth +
   SFSL (plus the spurious loss in classifier 1's class-wise market features,
   `biaslab:concept`).
3. Sample the instance prompt and the class prompt N times each, with the same sampling
   seeds for every row and every training seed (`sample_seed`..+N-1; the class images use
   other seeds), and read every image with classifier 1 (the one SFSL trains against),
   classifier 2 (trained the same way from another seed and draw, with a narrower trunk;
   no training loss loads it) and the oracle (`spurious.py`). Per image (`VERDICTS`):
   - spurious_1 / spurious_2: that classifier says "market" and the oracle sees no market;
   - called_1 / called_2: that classifier says "market"; drawn: the oracle sees a market;
   - awning: the oracle sees the awning; similarity_1 / similarity_2: cosine of that
     classifier's class-wise market features to the references' mean (classifier.py);
   - class_drawn: for the class prompt, the oracle sees a market (the prior is kept).
   The verdicts of a finished seed are saved in the run folder
   (seeds/seed_<s>/verdicts.json); a rerun with the same config and code reuses them.
4. Aggregate (`aggregate`): each row's rate with a 95% bootstrap interval over training
   seeds and samples (cells [S, N], `intervals.py`; each sampling seed is a "prompt"
   column), and the paired difference SFSL - DreamBooth with its interval.
5. Write results.json (provenance, config, every verdict, per-seed rows, aggregates),
   results.md (rendered from results.json by `render_markdown`), and the first seed's
   comparison.png and class_prompt.png.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..assets import WEIGHTS_DIR
from ..atomic import atomic_write_text
from ..judgenet import JudgeNet, load_judgenet
from ..progress import OnStep
from ..sampling import sample_tensor
from ..sfsl import (
    SFSLConfig,
    ensure_class_images,
    load_classifier,
    load_image_folder,
    train_sfsl,
)
from ..sfsl.classifier import Classifier, reference_similarity
from ..sfsl.presets import (
    CLASS_TEMPLATE,
    CLASSIFIER_SPEC,
    INSTANCE_TEMPLATE,
    SPURIOUS_LAB,
)
from .artefacts import load_world
from .intervals import (
    LEVEL,
    REPLICATES,
    difference_interval,
    excludes_zero,
    format_interval,
    rate_interval,
)
from .provenance import code_commit, provenance
from .report import comparison_grid
from .spurious import (
    CARD_NAME,
    CLASSIFIER_NAME,
    NO_OBJECT,
    ORACLE_HEADS,
    ORACLE_NAME,
    SECOND_CLASSIFIER_NAME,
    SPURIOUS_CONCEPT,
    write_references,
)
from .world import CONCEPTS, RESOLUTION

TITLE = "SFSL in the bias lab: spurious-feature generation over training seeds"
BASE = "base"
DREAMBOOTH = "DreamBooth"
SFSL = "DreamBooth + SFSL"
ROWS = (BASE, DREAMBOOTH, SFSL)
# trained row -> (spurious loss on, folder name)
TRAINED_ROWS = {DREAMBOOTH: (False, "dreambooth"), SFSL: (True, "dreambooth_sfsl")}
CLASS_IMAGE_SEED_OFFSET = 10_000  # class images: data_seed + 10000 + i, never a sampling seed of the evaluation
VERDICTS_NAME = "verdicts.json"
# per-image verdicts: key -> what it says
VERDICTS = {
    "spurious_1": "classifier 1 says market, the oracle sees no market",
    "spurious_2": "classifier 2 says market, the oracle sees no market",
    "called_1": "classifier 1 says market",
    "called_2": "classifier 2 says market",
    "drawn": "the oracle sees a market",
    "awning": "the oracle sees the awning",
    "no_object": "the oracle sees no object",
    "similarity_1": "cosine of classifier 1's class-wise market features to the references' mean",
    "similarity_2": "cosine of classifier 2's class-wise market features to the references' mean",
    "class_drawn": "class prompt: the oracle sees a market",
}
# reported metric -> (verdict, title, what SFSL aims for)
METRICS = {
    "spurious_rate_1": ("spurious_1", "spurious rate, classifier 1 (SFSL trains against it)", "higher"),
    "spurious_rate_2": ("spurious_2", "spurious rate, classifier 2 (independent)", "higher"),
    "market_called_1": ("called_1", "classifier 1 says market", "higher"),
    "market_called_2": ("called_2", "classifier 2 says market", "higher"),
    "market_drawn": ("drawn", "market drawn (oracle)", "lower"),
    "awning": ("awning", "awning drawn (oracle)", "higher"),
    "similarity_1": ("similarity_1", "similarity to references, classifier 1 features (trained against)", "higher"),
    "similarity_2": ("similarity_2", "similarity to references, classifier 2 features", "higher"),
    "class_prompt_market_drawn": ("class_drawn", "class prompt: market drawn (prior kept)", "higher"),
}
# the columns of results.md's tables (results.json has every metric)
SHOWN = ("spurious_rate_1", "spurious_rate_2", "market_drawn", "awning", "similarity_1", "similarity_2",
         "class_prompt_market_drawn")
SHORT = {"spurious_rate_1": "spurious rate, clf 1 (trained against)", "spurious_rate_2": "spurious rate, clf 2",
         "market_called_1": "clf 1 says market", "market_called_2": "clf 2 says market",
         "market_drawn": "market drawn", "awning": "awning drawn", "similarity_1": "similarity, clf 1 (trained against)",
         "similarity_2": "similarity, clf 2", "class_prompt_market_drawn": "class prompt: market drawn"}
DIFFERENCE = f"{SFSL} - {DREAMBOOTH}"


@dataclass(frozen=True)
class SFSLLabConfig:
    """Budgets of the measurement (defaults: the shipped run; `quick()`: CI)."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # training seeds (LoRA init, data order, noise)
    data_seed: int = 0  # references and class images, the same for every training seed
    sample_seed: int = 0  # sampling seeds sample_seed..+samples-1, the same for every row and training seed
    references: int = 8
    class_images: int = 64
    steps: int = SPURIOUS_LAB["steps"]
    batch_size: int = 4
    rank: int = SPURIOUS_LAB["rank"]
    lr: float = SPURIOUS_LAB["lr"]
    prior_loss_weight: float = 1.0
    spurious_weight: float = SPURIOUS_LAB["spurious_weight"]
    spurious_every: int = SPURIOUS_LAB["spurious_every"]
    denoise_steps: int = 10
    samples: int = 64  # per prompt (instance and class)
    sample_steps: int = 20
    cfg: float = 5.0

    def __post_init__(self):
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one: {self.seeds}")

    @classmethod
    def quick(cls, seeds: tuple[int, ...] = (0, 1)) -> SFSLLabConfig:
        return cls(seeds=seeds, references=2, class_images=2, steps=2, batch_size=1, spurious_every=1,
                   denoise_steps=2, samples=3, sample_steps=2)

    def shared(self) -> dict:
        """Everything but the list of seeds: what a saved seed's verdicts must match to be reused."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "seeds"}


@dataclass(frozen=True)
class SFSLLabResult:
    out_dir: Path
    record: dict
    table: str


@dataclass(frozen=True)
class Readers:
    """The networks that read the generations: classifier 1 (trained against), classifier 2, oracle."""

    classifier_1: Classifier
    classifier_2: Classifier
    oracle: JudgeNet


def _sfsl_config(c: SFSLLabConfig, seed: int, spurious_weight: float, classifier_dir: Path) -> SFSLConfig:
    return SFSLConfig(
        class_name=SPURIOUS_CONCEPT, instance_template=INSTANCE_TEMPLATE, class_template=CLASS_TEMPLATE,
        prior_loss_weight=c.prior_loss_weight, spurious_weight=spurious_weight, spurious_every=c.spurious_every,
        classifier=CLASSIFIER_SPEC, classifier_weights=str(classifier_dir),
        classifier_size=SPURIOUS_LAB["classifier_size"], target_class=CONCEPTS.index(SPURIOUS_CONCEPT),
        train_text_encoder=True, steps=c.steps,
        batch_size=c.batch_size, lr=c.lr, rank=c.rank, alpha=float(c.rank), seed=seed,
        denoise_steps=c.denoise_steps, cfg=c.cfg, checkpoint_every=0,
    )


def verdicts(images: torch.Tensor, class_images: torch.Tensor, readers: Readers,
             references: torch.Tensor) -> dict[str, list]:
    """The VERDICTS of one row, one value per sample: `images` of the instance prompt,
    `class_images` of the class prompt, `references` the reference images (all
    [N, 3, 32, 32] in [-1, 1]). Verdicts are 0/1; similarities are rounded to 4 decimals."""
    target = CONCEPTS.index(SPURIOUS_CONCEPT)
    market = ORACLE_HEADS["object"].index(SPURIOUS_CONCEPT)
    with torch.no_grad():
        seen = readers.oracle.predict(images)
        drawn = seen["object"] == market
        out: dict[str, torch.Tensor] = {}
        for i, classifier in ((1, readers.classifier_1), (2, readers.classifier_2)):
            called = classifier.predict(images) == target
            out[f"spurious_{i}"] = called & ~drawn
            out[f"called_{i}"] = called
            out[f"similarity_{i}"] = reference_similarity(classifier.class_features(images, target),
                                                          classifier.class_features(references, target))
        out["drawn"] = drawn
        out["awning"] = seen["awning"] == 1
        out["no_object"] = seen["object"] == ORACLE_HEADS["object"].index(NO_OBJECT)
        out["class_drawn"] = readers.oracle.predict(class_images)["object"] == market
    return {key: ([round(float(v), 4) for v in out[key]] if key.startswith("similarity")
                  else [int(v) for v in out[key]]) for key in VERDICTS}


def _cells(row_verdicts: list[dict], metric: str) -> np.ndarray:
    """[S, N] cells of `metric` from one row's verdicts per seed."""
    return np.array([v[METRICS[metric][0]] for v in row_verdicts], dtype=float)


def _interval(interval: dict) -> dict:
    return {k: round(v, 4) for k, v in interval.items()}


def aggregate(record_verdicts: dict) -> dict:
    """Aggregates of `record_verdicts` ({"base": {verdict: [N]}, "seeds": {seed: {row:
    {verdict: [N]}}}}): {"rows": {row: {metric: interval}}, "difference": {metric:
    interval + "excludes_zero"}}, intervals as {"mean", "low", "high"} (intervals.py)."""
    seeds = list(record_verdicts["seeds"])
    by_row = {BASE: [record_verdicts["base"]]}
    by_row.update({row: [record_verdicts["seeds"][s][row] for s in seeds] for row in TRAINED_ROWS})
    rows = {row: {metric: _interval(rate_interval(_cells(values, metric))) for metric in METRICS}
            for row, values in by_row.items()}
    difference = {}
    for metric in METRICS:
        interval = _interval(difference_interval(_cells(by_row[SFSL], metric), _cells(by_row[DREAMBOOTH], metric)))
        difference[metric] = {**interval, "excludes_zero": excludes_zero(interval)}
    return {"rows": rows, "difference": difference, "replicates": REPLICATES, "level": LEVEL}


def per_seed_rows(record_verdicts: dict) -> list[dict]:
    """One row per (seed, trained row) with every metric's rate over the samples; the base
    model (untrained, seed None) first."""
    def rates(values: dict) -> dict:
        return {metric: round(float(np.mean(values[verdict])), 4) for metric, (verdict, _, _) in METRICS.items()}

    rows = [{"seed": None, "row": BASE, **rates(record_verdicts["base"])}]
    for seed, by_row in record_verdicts["seeds"].items():
        rows += [{"seed": int(seed), "row": row, **rates(by_row[row])} for row in TRAINED_ROWS]
    return rows


def _effect(interval: dict) -> str:
    if not interval["excludes_zero"]:
        return "no difference shown (the interval includes 0)"
    return f"SFSL {'higher' if interval['mean'] > 0 else 'lower'}"


def render_markdown(record: dict) -> str:
    """results.md, rendered from results.json's `record` alone."""
    p, c = record["provenance"], record["provenance"]["config"]["lab"]
    seeds, n = p["seeds"], c["samples"]
    code = p["code"]
    dirty = {True: " (uncommitted changes under scoft_train/)", False: "", None: ""}[code["dirty"]]
    lines = [f"# {record['title']}", ""]
    lines += [f"Provenance: code commit `{code['commit']}`{dirty}; training seeds {', '.join(map(str, seeds))}; "
              f"wall time {p['wall_time_s']:.0f} s; finished {p['finished_utc']}; command `{p['command']}`; "
              f"torch {p['environment']['torch']}, {p['environment']['threads']} thread(s). The full config is in "
              "results.json (provenance.config).", ""]
    if record["resumed_seeds"]:
        lines += [f"Seeds {', '.join(map(str, record['resumed_seeds']))} were computed by an earlier invocation with "
                  "the same config and code commit and reused from their saved verdicts.", ""]
    lines += ["## Per seed", "",
              f"Rates over {n} samples per prompt; the same sampling seeds "
              f"{c['sample_seed']}..{c['sample_seed'] + n - 1} for every row and training seed. The base model is not "
              "trained, so it has one row.", ""]
    columns = [SHORT[m] for m in SHOWN]
    lines += ["| seed | row | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for r in record["per_seed"]:
        seed = "-" if r["seed"] is None else str(r["seed"])
        lines.append(f"| {seed} | {r['row']} | " + " | ".join(f"{r[m]:.3f}" for m in SHOWN) + " |")
    agg = record["aggregate"]
    level = f"{agg['level']:.0%}"
    lines += ["", "## Aggregate", "",
              f"Mean over training seeds and samples with a {level} bootstrap interval ({agg['replicates']} "
              f"replicates; seeds and samples drawn with replacement; the base row has one seed, so its interval is "
              "over samples only).", ""]
    lines += ["| metric | " + " | ".join(agg["rows"]) + f" | {DIFFERENCE} (paired) | effect |",
              "|---|" + "---|" * (len(agg["rows"]) + 2)]
    for metric in METRICS:
        difference = agg["difference"][metric]
        lines.append(f"| {record['metrics'][metric]['title']} | "
                     + " | ".join(format_interval(agg["rows"][row][metric]) for row in agg["rows"])
                     + f" | {format_interval(difference, signed=True)} | {_effect(difference)} |")
    lines += ["", "An effect is stated only where the paired interval excludes 0. The difference pairs seed s of "
              "one row with seed s of the other and uses the same drawn samples for both.", "", "## Setup", ""]
    lines += [f"- {note}" for note in record["notes"]]
    return "\n".join(lines) + "\n"


def _notes(c: SFSLLabConfig, record_prompts: tuple[str, str], classifiers: dict) -> list[str]:
    instance_prompt, class_prompt = record_prompts
    return [
        f"Instance prompt {instance_prompt!r}, class prompt {class_prompt!r}; DDIM {c.sample_steps} steps, cfg {c.cfg}; "
        f"{c.samples} samples per prompt, row and training seed.",
        f"Training (both LoRAs, every seed): {c.references} references (the awning over empty scenes), "
        f"{c.class_images} class images from the frozen world model (seeds {c.data_seed + CLASS_IMAGE_SEED_OFFSET}.."
        f"{c.data_seed + CLASS_IMAGE_SEED_OFFSET + c.class_images - 1}, not sampling seeds), UNet + text-encoder LoRA "
        f"rank {c.rank}, {c.steps} steps, batch {c.batch_size} + {c.batch_size} class images, lr {c.lr}, prior weight "
        f"{c.prior_loss_weight}. The training seed sets the LoRA initialisation, data order and noise; the data are "
        "the same for every seed.",
        f"DreamBooth + SFSL adds the spurious loss (weight {c.spurious_weight}) in classifier 1's class-wise market "
        f"features ({CLASSIFIER_SPEC}), decoded branch every {c.spurious_every} steps with {c.denoise_steps} "
        "denoising steps.",
        f"Classifier 1 ({classifiers['1']['weights']}, width {classifiers['1']['width']}): SFSL's spurious loss reads "
        "its features, so its spurious rate and similarity are circular (what SFSL optimises). Classifier 2 "
        f"({classifiers['2']['weights']}, width {classifiers['2']['width']}): trained the same way (the awning behind "
        "95% of web-photo markets and 5% of everything else) from another seed and data draw; no training loss "
        "loads it. Oracle: trained with the awning independent of the object. The world model never saw the awning.",
        "Spurious rate: the classifier says market and the oracle sees no market drawn.",
    ]


def _readers(spurious_dir: Path, device: str) -> Readers:
    return Readers(load_classifier(CLASSIFIER_SPEC, spurious_dir / CLASSIFIER_NAME, device=device),
                   load_classifier(CLASSIFIER_SPEC, spurious_dir / SECOND_CLASSIFIER_NAME, device=device),
                   load_judgenet(spurious_dir / ORACLE_NAME).to(device))


def _width(folder: Path) -> int:
    return int(json.loads((folder / "config.json").read_text())["width"])


def dumps(record: dict) -> str:
    """results.json's text: indented, with every list of numbers on one line."""
    text = json.dumps(record, indent=1)
    return re.sub(r"\[[-0-9.,\s]*\]", lambda m: "[" + " ".join(m.group(0)[1:-1].split()) + "]", text) + "\n"


def _load_seed(path: Path, c: SFSLLabConfig, code: dict) -> dict | None:
    """The saved verdicts of a seed, if they were made with this config and code commit."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if saved.get("config") != json.loads(json.dumps(c.shared())) or saved.get("code", {}).get("commit") != code["commit"]:
        return None
    return saved


def sfsl_lab(out_dir: str | os.PathLike, config: SFSLLabConfig = SFSLLabConfig(),
             weights_dir: str | os.PathLike = WEIGHTS_DIR, device: str = "cpu",
             on_step: OnStep | None = None) -> SFSLLabResult:
    """Run the measurement into `out_dir` (created; class images and finished seeds
    already there, from the same config and code commit, are reused)."""
    out_dir, weights_dir, c = Path(out_dir), Path(weights_dir), config
    start = time.perf_counter()
    code = code_commit()
    bundle = load_world(weights_dir, device=device)
    spurious_dir = weights_dir / "spurious"
    readers = _readers(spurious_dir, device)
    classifier_dir = spurious_dir / CLASSIFIER_NAME
    plain = _sfsl_config(c, c.seeds[0], 0.0, classifier_dir)
    references = write_references(out_dir / "references", c.references, c.data_seed)
    ensure_class_images(bundle, out_dir / "class_images", plain.class_prompt, count=c.class_images,
                        seed=c.data_seed + CLASS_IMAGE_SEED_OFFSET, steps=c.sample_steps, cfg=c.cfg, scheduler="ddim",
                        size=RESOLUTION, on_step=on_step)
    instances = load_image_folder(references, plain.instance_prompt, resolution=RESOLUTION)
    classes = load_image_folder(out_dir / "class_images", plain.class_prompt, resolution=RESOLUTION)
    reference_pixels = torch.stack([instances.get(i, None)["pixel_values"] for i in range(len(instances))]).to(device)

    def generate(prompt: str, lora: Path | None) -> torch.Tensor:
        pixels = sample_tensor(bundle, [prompt] * c.samples, c.sample_seed, lora_path=lora, steps=c.sample_steps,
                               cfg=c.cfg, batch_size=64)
        return pixels.permute(0, 3, 1, 2).to(device) * 2 - 1

    base_instance, base_class = generate(plain.instance_prompt, None), generate(plain.class_prompt, None)
    record_verdicts = {"base": verdicts(base_instance, base_class, readers, reference_pixels), "seeds": {}}
    captions = {prompt: [f"{prompt} (seed {c.sample_seed + i})" for i in range(c.samples)]
                for prompt in (plain.instance_prompt, plain.class_prompt)}
    shown = list(range(min(8, c.samples)))
    seed_info, resumed = {}, []
    for seed in c.seeds:
        seed_dir = out_dir / "seeds" / f"seed_{seed}"
        saved = _load_seed(seed_dir / VERDICTS_NAME, c, code)
        if saved is None:
            lap = time.perf_counter()
            instance_samples, class_samples, rows, timings = {BASE: base_instance}, {BASE: base_class}, {}, {}
            for row, (spurious, slug) in TRAINED_ROWS.items():
                train_start = time.perf_counter()
                sfsl_config = _sfsl_config(c, seed, c.spurious_weight if spurious else 0.0, classifier_dir)
                lora = train_sfsl(bundle, instances, classes, sfsl_config, seed_dir / "loras" / slug, on_step=on_step,
                                  classifier=readers.classifier_1, lora_name=f"{slug}.safetensors").lora
                timings[f"train {row}"] = round(time.perf_counter() - train_start, 1)
                instance_samples[row] = generate(plain.instance_prompt, lora)
                class_samples[row] = generate(plain.class_prompt, lora)
                rows[row] = verdicts(instance_samples[row], class_samples[row], readers, reference_pixels)
            comparison_grid(instance_samples, captions[plain.instance_prompt], shown, seed_dir / "comparison.png")
            comparison_grid(class_samples, captions[plain.class_prompt], shown, seed_dir / "class_prompt.png")
            timings["seed total"] = round(time.perf_counter() - lap, 1)
            saved = {"seed": seed, "config": c.shared(), "code": code, "wall_time_s": timings, "rows": rows}
            atomic_write_text(seed_dir / VERDICTS_NAME, json.dumps(saved) + "\n")
        else:
            resumed.append(seed)
        record_verdicts["seeds"][str(seed)] = saved["rows"]
        seed_info[str(seed)] = {"code": saved["code"], "wall_time_s": saved["wall_time_s"]}
    first = out_dir / "seeds" / f"seed_{c.seeds[0]}"
    for name in ("comparison.png", "class_prompt.png"):
        shutil.copyfile(first / name, out_dir / name)
    card = json.loads((spurious_dir / CARD_NAME).read_text()) if (spurious_dir / CARD_NAME).is_file() else {}
    classifiers = {
        "1": {"spec": CLASSIFIER_SPEC, "weights": f"spurious/{CLASSIFIER_NAME}", "width": _width(spurious_dir / CLASSIFIER_NAME),
              "role": "SFSL's spurious loss reads its class-wise market features (trained against)",
              "accuracy": card.get("classifier_accuracy"), "market_rate": card.get("classifier_market_rate")},
        "2": {"spec": CLASSIFIER_SPEC, "weights": f"spurious/{SECOND_CLASSIFIER_NAME}",
              "width": _width(spurious_dir / SECOND_CLASSIFIER_NAME),
              "role": "independent reader: no training loss loads it",
              "accuracy": card.get(SECOND_CLASSIFIER_NAME, {}).get("accuracy"),
              "market_rate": card.get(SECOND_CLASSIFIER_NAME, {}).get("market_rate")},
    }
    full_config = {"lab": dataclasses.asdict(c),
                   "sfsl": {row: _sfsl_config(c, c.seeds[0], c.spurious_weight if spurious else 0.0,
                                              classifier_dir).to_dict() | {"seed": "the training seed"}
                            for row, (spurious, _) in TRAINED_ROWS.items()},
                   "weights_dir": str(weights_dir), "device": device}
    record = {
        "title": TITLE,
        "provenance": provenance(full_config, list(c.seeds), time.perf_counter() - start),
        "instance_prompt": plain.instance_prompt, "class_prompt": plain.class_prompt,
        "classifiers": classifiers,
        "metrics": {key: {"verdict": verdict, "title": title, "better": better}
                    for key, (verdict, title, better) in METRICS.items()},
        "verdict_meanings": VERDICTS,
        "resumed_seeds": resumed,
        "seed_runs": seed_info,
        "per_seed": per_seed_rows(record_verdicts),
        "aggregate": aggregate(record_verdicts),
        "verdicts": record_verdicts,
        "notes": _notes(c, (plain.instance_prompt, plain.class_prompt), classifiers),
    }
    atomic_write_text(out_dir / "results.json", dumps(record))
    table = render_markdown(record)
    atomic_write_text(out_dir / "results.md", table)
    return SFSLLabResult(out_dir, record, table)
