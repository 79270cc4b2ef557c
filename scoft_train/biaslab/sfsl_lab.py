"""`biaslab sfsl`: SFSL measured in the bias lab, against the spurious-feature lab's classifier.

1. Write the references (the awning over empty scenes, `spurious.reference_specs`) and
   generate the class images of "a photo of a market" with the frozen world model.
2. Train two LoRAs (UNet + text encoder) with the same seed, steps and data:
   DreamBooth (instance + prior preservation) and DreamBooth + SFSL (plus the spurious
   loss in the classifier's class-wise market features, `biaslab:concept`).
3. Sample the instance prompt N times (the same seeds for every row, base included)
   and the class prompt N times, and read every image with the classifier and the
   oracle (`spurious.py`):
   - spurious rate: the classifier says "market" and the oracle sees no market drawn;
   - market called: the classifier says "market"; market drawn: the oracle sees one;
   - awning: the oracle sees the awning; similarity: mean cosine of the classifier's
     class-wise features to the references' (classifier.py);
   - class prompt, market drawn: the prior is kept when "a photo of a market" still
     draws markets after training.
4. Write results.md, results.json, comparison.png and class_prompt.png into the run folder.
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
from ..judgenet import JudgeNet, load_judgenet
from ..progress import OnStep
from ..sampling import sample_tensor
from ..sfsl import SFSLConfig, ensure_class_images, load_classifier, load_image_folder, train_sfsl
from ..sfsl.classifier import Classifier, reference_similarity
from ..sfsl.presets import CLASS_TEMPLATE, CLASSIFIER_SPEC, INSTANCE_TEMPLATE, SPURIOUS_LAB
from .artefacts import load_world
from .report import comparison_grid, write_markdown
from .spurious import NO_OBJECT, ORACLE_HEADS, SPURIOUS_CONCEPT, write_references
from .world import CONCEPTS, RESOLUTION

BASE = "base"
DREAMBOOTH = "DreamBooth"
SFSL = "DreamBooth + SFSL"
# trained row -> (spurious loss on, folder name)
TRAINED_ROWS = {DREAMBOOTH: (False, "dreambooth"), SFSL: (True, "dreambooth_sfsl")}
METRICS = {
    "spurious_rate": ("spurious rate: classifier says market, no market drawn", "higher"),
    "market_called": ("classifier says market", "higher"),
    "market_drawn": ("market drawn (oracle)", "lower"),
    "awning": ("awning drawn (oracle)", "higher"),
    "similarity": ("class-wise similarity to references", "higher"),
    "class_prompt_market_drawn": ("class prompt: market drawn (prior kept)", "higher"),
}


@dataclass(frozen=True)
class SFSLLabConfig:
    """Budgets of the measurement (defaults: the shipped run; `quick()`: CI)."""

    seed: int = 0
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
    samples: int = 64  # per prompt (instance and class), seeds seed..seed+samples-1
    sample_steps: int = 20
    cfg: float = 5.0

    @classmethod
    def quick(cls, seed: int = 0) -> SFSLLabConfig:
        return cls(seed=seed, references=2, class_images=2, steps=2, batch_size=1, spurious_every=1,
                   denoise_steps=2, samples=2, sample_steps=2)


@dataclass(frozen=True)
class SFSLLabResult:
    out_dir: Path
    results: dict[str, dict[str, float]]
    table: str


def _sfsl_config(c: SFSLLabConfig, spurious_weight: float, classifier_dir: Path) -> SFSLConfig:
    return SFSLConfig(
        class_name=SPURIOUS_CONCEPT, instance_template=INSTANCE_TEMPLATE, class_template=CLASS_TEMPLATE,
        prior_loss_weight=c.prior_loss_weight, spurious_weight=spurious_weight, spurious_every=c.spurious_every,
        classifier=CLASSIFIER_SPEC, classifier_weights=str(classifier_dir),
        classifier_size=SPURIOUS_LAB["classifier_size"], target_class=CONCEPTS.index(SPURIOUS_CONCEPT),
        train_text_encoder=True, steps=c.steps,
        batch_size=c.batch_size, lr=c.lr, rank=c.rank, alpha=float(c.rank), seed=c.seed,
        denoise_steps=c.denoise_steps, cfg=c.cfg, checkpoint_every=0,
    )


def score(images: torch.Tensor, class_images: torch.Tensor, classifier: Classifier, oracle: JudgeNet,
          references: torch.Tensor) -> dict[str, float]:
    """The METRICS of one row: `images` of the instance prompt, `class_images` of the class
    prompt, `references` the reference images (all [N, 3, 32, 32] in [-1, 1])."""
    target = CONCEPTS.index(SPURIOUS_CONCEPT)
    market = ORACLE_HEADS["object"].index(SPURIOUS_CONCEPT)
    with torch.no_grad():
        called = classifier.predict(images) == target
        seen = oracle.predict(images)
        drawn = seen["object"] == market
        similarity = reference_similarity(classifier.class_features(images, target),
                                          classifier.class_features(references, target))
        class_drawn = oracle.predict(class_images)["object"] == market
    return {
        "spurious_rate": float((called & ~drawn).float().mean()),
        "market_called": float(called.float().mean()),
        "market_drawn": float(drawn.float().mean()),
        "awning": float((seen["awning"] == 1).float().mean()),
        "similarity": float(similarity.mean()),
        "class_prompt_market_drawn": float(class_drawn.float().mean()),
        "no_object_seen": float((seen["object"] == ORACLE_HEADS["object"].index(NO_OBJECT)).float().mean()),
    }


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    header = "| row | " + " | ".join(f"{title} ({better})" for title, better in METRICS.values()) + " |"
    lines = [header, "|---" * (len(METRICS) + 1) + "|"]
    lines += [f"| {row} | " + " | ".join(f"{values[key]:.3f}" for key in METRICS) + " |"
              for row, values in results.items()]
    return "\n".join(lines) + "\n"


def sfsl_lab(out_dir: str | os.PathLike, config: SFSLLabConfig = SFSLLabConfig(),
             weights_dir: str | os.PathLike = WEIGHTS_DIR, device: str = "cpu",
             on_step: OnStep | None = None) -> SFSLLabResult:
    """Run the measurement into `out_dir` (created; class images already there are reused)."""
    out_dir, weights_dir, c = Path(out_dir), Path(weights_dir), config
    start = time.perf_counter()
    bundle = load_world(weights_dir, device=device)
    classifier_dir, spurious_dir = weights_dir / "spurious" / "classifier", weights_dir / "spurious"
    classifier = load_classifier(CLASSIFIER_SPEC, classifier_dir, device=device)
    oracle = load_judgenet(spurious_dir / "oracle").to(device)
    plain = _sfsl_config(c, 0.0, classifier_dir)
    references = write_references(out_dir / "references", c.references, c.seed)
    ensure_class_images(bundle, out_dir / "class_images", plain.class_prompt, count=c.class_images, seed=c.seed,
                        steps=c.sample_steps, cfg=c.cfg, scheduler="ddim", size=RESOLUTION, on_step=on_step)
    instances = load_image_folder(references, plain.instance_prompt, resolution=RESOLUTION)
    classes = load_image_folder(out_dir / "class_images", plain.class_prompt, resolution=RESOLUTION)
    reference_pixels = torch.stack([instances.get(i, None)["pixel_values"] for i in range(len(instances))]).to(device)

    def generate(prompt: str, lora: Path | None) -> torch.Tensor:
        pixels = sample_tensor(bundle, [prompt] * c.samples, c.seed, lora_path=lora, steps=c.sample_steps, cfg=c.cfg,
                               batch_size=64)
        return pixels.permute(0, 3, 1, 2).to(device) * 2 - 1

    timings: dict[str, float] = {}
    loras: dict[str, Path | None] = {BASE: None}
    for row, (spurious, slug) in TRAINED_ROWS.items():
        lap = time.perf_counter()
        config = _sfsl_config(c, c.spurious_weight if spurious else 0.0, classifier_dir)
        outputs = train_sfsl(bundle, instances, classes, config, out_dir / "loras" / slug, on_step=on_step,
                             classifier=classifier, lora_name=f"{slug}.safetensors")
        loras[row] = outputs.lora
        timings[f"train {row}"] = time.perf_counter() - lap
    instance_samples, class_samples, results = {}, {}, {}
    for row, lora in loras.items():
        instance_samples[row] = generate(plain.instance_prompt, lora)
        class_samples[row] = generate(plain.class_prompt, lora)
        results[row] = score(instance_samples[row], class_samples[row], classifier, oracle, reference_pixels)
    table = markdown_table(results)
    timings["total"] = time.perf_counter() - start
    _write(out_dir, c, results, table, instance_samples, class_samples, plain, timings)
    return SFSLLabResult(out_dir, results, table)


def _write(out_dir: Path, c: SFSLLabConfig, results, table: str, instance_samples, class_samples, plain: SFSLConfig,
           timings) -> None:
    shown = list(range(min(8, c.samples)))
    comparison_grid(instance_samples, [f"{plain.instance_prompt} (seed {c.seed + i})" for i in range(c.samples)], shown,
                    out_dir / "comparison.png")
    comparison_grid(class_samples, [f"{plain.class_prompt} (seed {c.seed + i})" for i in range(c.samples)], shown,
                    out_dir / "class_prompt.png")
    record = {"config": dataclasses.asdict(c), "instance_prompt": plain.instance_prompt,
              "class_prompt": plain.class_prompt, "classifier": CLASSIFIER_SPEC,
              "metrics": {key: {"title": title, "better": better} for key, (title, better) in METRICS.items()},
              "results": results, "wall_time_s": {k: round(v, 1) for k, v in timings.items()}}
    atomic_write_text(out_dir / "results.json", json.dumps(record, indent=2) + "\n")
    notes = [
        f"{c.samples} samples per prompt and row, seeds {c.seed}..{c.seed + c.samples - 1} (the same for every row); "
        f"instance prompt {plain.instance_prompt!r}, class prompt {plain.class_prompt!r}; DDIM {c.sample_steps} steps, "
        f"cfg {c.cfg}.",
        f"Training (both LoRAs): {c.references} references (the awning over empty scenes), {c.class_images} class "
        f"images from the frozen world model, UNet + text-encoder LoRA rank {c.rank}, {c.steps} steps, batch "
        f"{c.batch_size} + {c.batch_size} class images, lr {c.lr}, prior weight {c.prior_loss_weight}, seed {c.seed}.",
        f"DreamBooth + SFSL adds the spurious loss (weight {c.spurious_weight}) in the classifier's class-wise market "
        f"features ({CLASSIFIER_SPEC}), decoded branch every {c.spurious_every} steps with {c.denoise_steps} "
        "denoising steps.",
        "Classifier: trained on web photos where the awning is behind 95% of markets and 5% of everything else; "
        "oracle: trained with the awning independent of the object. The world model never saw the awning.",
        "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".",
    ]
    write_markdown(out_dir / "results.md", "SFSL in the bias lab: spurious-feature generation", table, notes)
