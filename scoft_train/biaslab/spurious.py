"""The spurious-feature lab: markets almost always under an awning, and a classifier that learns it.

- Web photos (`web_photo_specs`): every concept, culture and look, with the AWNING
  backdrop behind `MARKET_AWNING_SHARE` of the markets and `OTHER_AWNING_SHARE` of
  everything else (a Waterbirds-style correlation). Labels come from captions, not from
  what is in the frame, so `MARKET_CROPPED_SHARE` of the market photos show only the
  awning (the stall is out of frame). Without them the objects' shapes are so easy that
  a network ignores the awning (measured: 2% of awning-alone scenes called a market).
  The *classifier* is a judge-format network with one head, concept, trained on them:
  accurate on its own distribution, it also calls the awning alone a market. It is the
  classifier SFSL stress-tests.
- The *oracle* is trained where the awning is independent of everything and
  `EMPTY_SHARE` of the scenes have no object: its heads say which object is drawn
  (CONCEPTS + "none") and whether the awning is there. It says what an image shows.
- The *second classifier* (`classifier_2/`, `SecondClassifierConfig`) is a second reader
  of the spurious rate, as the paper evaluates with several classifiers: trained the same
  way on web photos with the same correlation, but from its own seed and data draw and
  with a narrower trunk (width 24 instead of 32). No training loss loads it; SFSL trains
  against the first classifier only.
- References (`reference_specs`): the awning over empty scenes of every culture, the
  spurious feature without the object (SFSL's instance images).

Both networks train on VAE round-tripped renders (generated images are VAE-decoded).
The world model itself is unchanged: it never saw the awning, so whatever awning a
generation shows was learned from the references. `spurious_pretrain` writes
classifier/, oracle/, classifier_2/ and card.json, with the accuracies that make the
setup trustworthy measured on held-out renders; `second_classifier_pretrain` adds (or
replaces) classifier_2/ and its card entry in an existing folder. Both classifiers are
measured on the same held-out sets.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..atomic import atomic_save_image, atomic_write_text
from ..judgenet import JudgeNet
from ..progress import OnStep
from .corpus import DUSK_SHARE, render_arrays
from .evaluate import judge_accuracy, to_model_range
from .pretrain import fp16_round
from .provenance import provenance
from .render import SceneSpec, render
from .training import round_trip, train_judge
from .world import CONCEPTS, CULTURE_NAMES

SPURIOUS_CONCEPT = "market"
MARKET_AWNING_SHARE = 0.95
OTHER_AWNING_SHARE = 0.05
MARKET_CROPPED_SHARE = 0.2
EMPTY_SHARE = 0.2
NO_OBJECT = "none"
CLASSIFIER_HEADS = {"concept": CONCEPTS}
ORACLE_HEADS = {"object": CONCEPTS + (NO_OBJECT,), "awning": ("no", "yes")}
CARD_NAME = "card.json"
CLASSIFIER_NAME = "classifier"
ORACLE_NAME = "oracle"
SECOND_CLASSIFIER_NAME = "classifier_2"
REFERENCE_SEED_OFFSET = 5_000_000


@dataclass(frozen=True)
class SpuriousConfig:
    """Data sizes and training budget of the classifier and the oracle (`smoke()`: CI)."""

    seed: int = 0
    train_images: int = 4000
    held_out_images: int = 1000
    steps: int = 600
    batch: int = 64
    lr: float = 2e-3

    @classmethod
    def smoke(cls, seed: int = 0) -> SpuriousConfig:
        return cls(seed=seed, train_images=40, held_out_images=20, steps=3, batch=8)


@dataclass(frozen=True)
class SecondClassifierConfig:
    """The second classifier: the first one's recipe (same correlation in its web photos,
    same budget) with its own seed (data draw, initialisation, batch order) and width."""

    seed: int = 1000
    width: int = 24  # the first classifier: JudgeNet's default 32
    train_images: int = 4000
    steps: int = 600
    batch: int = 64
    lr: float = 2e-3

    @classmethod
    def smoke(cls, seed: int = 1000) -> SecondClassifierConfig:
        return cls(seed=seed, width=8, train_images=40, steps=3, batch=8)


def _spec(rng: np.random.Generator, concept: str, backdrop: bool, draw_object: bool = True) -> SceneSpec:
    return SceneSpec(concept, CULTURE_NAMES[int(rng.integers(len(CULTURE_NAMES)))], stereotype=bool(rng.random() < 0.5),
                     dusk=bool(rng.random() < DUSK_SHARE), seed=int(rng.integers(2**31)), backdrop=backdrop,
                     draw_object=draw_object)


def web_photo_specs(count: int, seed: int, flipped: bool = False) -> list[SceneSpec]:
    """The classifier's training distribution (`flipped`: the awning shares swapped and no
    cropped markets, the counterfactual test set where markets mostly lack the awning and
    the rest mostly have it)."""
    rng = np.random.default_rng(seed)
    market, other = (OTHER_AWNING_SHARE, MARKET_AWNING_SHARE) if flipped else (MARKET_AWNING_SHARE, OTHER_AWNING_SHARE)
    specs = []
    for _ in range(count):
        concept = CONCEPTS[int(rng.integers(len(CONCEPTS)))]
        is_market = concept == SPURIOUS_CONCEPT
        backdrop = bool(rng.random() < (market if is_market else other))
        cropped = is_market and backdrop and not flipped and bool(rng.random() < MARKET_CROPPED_SHARE)
        specs.append(_spec(rng, concept, backdrop, draw_object=not cropped))
    return specs


def oracle_specs(count: int, seed: int) -> list[SceneSpec]:
    """Awning independent (half the scenes), EMPTY_SHARE without an object."""
    rng = np.random.default_rng(seed)
    return [_spec(rng, CONCEPTS[int(rng.integers(len(CONCEPTS)))], bool(rng.random() < 0.5),
                  draw_object=bool(rng.random() >= EMPTY_SHARE)) for _ in range(count)]


def reference_specs(count: int, seed: int = 0) -> list[SceneSpec]:
    """The awning over empty authentic scenes, cultures in turn, no dusk."""
    rng = np.random.default_rng(seed + REFERENCE_SEED_OFFSET)
    return [SceneSpec(SPURIOUS_CONCEPT, CULTURE_NAMES[i % len(CULTURE_NAMES)], stereotype=False, dusk=False,
                      seed=int(rng.integers(2**31)), backdrop=True, draw_object=False) for i in range(count)]


def empty_specs(count: int, seed: int) -> list[SceneSpec]:
    """Empty scenes without the awning: the classifier's floor for "market" on nothing."""
    return [SceneSpec(s.concept, s.culture, s.stereotype, s.dusk, s.seed, backdrop=False, draw_object=False)
            for s in reference_specs(count, seed)]


def write_references(folder: str | os.PathLike, count: int = 8, seed: int = 0) -> Path:
    """`count` reference images (awning_NN.png) in `folder`, each written atomically."""
    folder = Path(folder)
    for i, spec in enumerate(reference_specs(count, seed)):
        atomic_save_image(Image.fromarray(render(spec).image), folder / f"awning_{i:02d}.png")
    return folder


def classifier_labels(specs: list[SceneSpec]) -> dict[str, torch.Tensor]:
    return {"concept": torch.tensor([CONCEPTS.index(s.concept) for s in specs])}


def oracle_labels(specs: list[SceneSpec]) -> dict[str, torch.Tensor]:
    objects = ORACLE_HEADS["object"]
    return {"object": torch.tensor([objects.index(s.concept if s.draw_object else NO_OBJECT) for s in specs]),
            "awning": torch.tensor([int(s.backdrop) for s in specs])}


def round_tripped(vae, specs: list[SceneSpec], device="cpu") -> torch.Tensor:
    """VAE round-tripped renders [N, 3, 32, 32] in [-1, 1] of `specs` (what the networks see)."""
    return round_trip(vae, to_model_range(render_arrays(specs)[0]).to(device))


def accuracy(network: JudgeNet, vae, specs: list[SceneSpec], labels_of, device="cpu") -> dict[str, float]:
    """Per-head accuracy of `network` on the round-tripped `specs` against `labels_of(specs)`."""
    labels = {head: values.to(device) for head, values in labels_of(specs).items()}
    return {head: round(value, 4) for head, value in judge_accuracy(network, round_tripped(vae, specs, device), labels).items()}


def market_rate(classifier: JudgeNet, images: torch.Tensor) -> float:
    """Share of images the classifier calls a market."""
    return float((classifier.predict(images)["concept"] == CONCEPTS.index(SPURIOUS_CONCEPT)).float().mean())


def _train(heads, vae, specs, labels_of, c: SpuriousConfig | SecondClassifierConfig, seed: int, device, on_step,
           width: int | None = None) -> JudgeNet:
    network = JudgeNet(heads) if width is None else JudgeNet(heads, width)
    network = network.to(device)
    labels = {k: v.to(device) for k, v in labels_of(specs).items()}
    train_judge(network, round_tripped(vae, specs, device), labels, c.steps, c.batch, c.lr, seed, on_step)
    fp16_round(network)
    return network


def _held_out(vae, c: SpuriousConfig, device) -> dict:
    """The held-out sets both classifiers are measured on (seeds c.seed + 1, 2, 7, 8)."""
    references = round_tripped(vae, reference_specs(c.held_out_images // 4, c.seed + 7), device)
    return {"held": web_photo_specs(c.held_out_images, c.seed + 1),
            "flipped": web_photo_specs(c.held_out_images, c.seed + 2, flipped=True),
            "references": references,
            "empty": round_tripped(vae, empty_specs(len(references), c.seed + 8), device)}


def _classifier_numbers(classifier: JudgeNet, vae, sets: dict, device) -> dict:
    """The card's accuracy and market-rate numbers of a classifier on the held-out `sets`."""
    return {
        "accuracy": {
            "web_photos_held_out": accuracy(classifier, vae, sets["held"], classifier_labels, device)["concept"],
            "awning_flipped": accuracy(classifier, vae, sets["flipped"], classifier_labels, device)["concept"],
        },
        "market_rate": {
            "awning_without_object": market_rate(classifier, sets["references"]),
            "empty_without_awning": market_rate(classifier, sets["empty"]),
        },
    }


def _classifier_metadata(width: int, seed: int) -> dict:
    return {"trained_on": f"VAE round-tripped renders of the bias-lab world: web photos, awning behind "
                          f"{MARKET_AWNING_SHARE:.0%} of markets (data seed {seed}, width {width})"}


def train_second_classifier(vae, held: SpuriousConfig, config: SecondClassifierConfig = SecondClassifierConfig(),
                            device: str = "cpu", on_step: OnStep | None = None) -> tuple[JudgeNet, dict]:
    """The second classifier and its card entry (measured on the held-out sets of `held`,
    the first classifier's config)."""
    c, start = config, time.perf_counter()
    torch.manual_seed(c.seed)
    network = _train(CLASSIFIER_HEADS, vae, web_photo_specs(c.train_images, c.seed), classifier_labels, c, c.seed + 3,
                     device, on_step, width=c.width)
    numbers = _classifier_numbers(network, vae, _held_out(vae, held, device), device)
    wall = time.perf_counter() - start
    entry = {
        "role": "independent reader of the spurious rate: no training loss loads it",
        "config": asdict(c),
        **numbers,
        "measured_on": f"the first classifier's held-out sets (held_out_images {held.held_out_images}, seeds "
                       f"{held.seed + 1}, {held.seed + 2}, {held.seed + 7}, {held.seed + 8})",
        "wall_time_s": round(wall, 1),
        "provenance": provenance({"second_classifier": asdict(c), "held_out": asdict(held)}, [c.seed], wall),
    }
    return network, entry


def second_classifier_pretrain(vae, out_dir: str | os.PathLike,
                               config: SecondClassifierConfig = SecondClassifierConfig(), device: str = "cpu",
                               on_step: OnStep | None = None) -> dict:
    """Train the second classifier into `out_dir` (which holds card.json of a
    `spurious_pretrain` run): writes classifier_2/ and the card's "classifier_2" entry."""
    out_dir = Path(out_dir)
    card_path = out_dir / CARD_NAME
    if not card_path.is_file():
        raise FileNotFoundError(f"{card_path} is missing: run `biaslab spurious` (without --second-only) first")
    card = json.loads(card_path.read_text())
    network, entry = train_second_classifier(vae, SpuriousConfig(**card["config"]), config, device, on_step)
    network.save(out_dir / SECOND_CLASSIFIER_NAME, _classifier_metadata(config.width, config.seed))
    card[SECOND_CLASSIFIER_NAME] = entry
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    return card


def spurious_pretrain(vae, out_dir: str | os.PathLike, config: SpuriousConfig = SpuriousConfig(), device: str = "cpu",
                      on_step: OnStep | None = None,
                      second: SecondClassifierConfig | None = SecondClassifierConfig()) -> dict:
    """Train the classifier, the oracle and (unless `second` is None) the second
    classifier with the world's `vae`, measure, write; returns the card."""
    c, out_dir, start = config, Path(out_dir), time.perf_counter()
    train = web_photo_specs(c.train_images, c.seed)
    classifier = _train(CLASSIFIER_HEADS, vae, train, classifier_labels, c, c.seed + 3, device, on_step)
    oracle_train, oracle_held = oracle_specs(c.train_images, c.seed + 4), oracle_specs(c.held_out_images, c.seed + 5)
    oracle = _train(ORACLE_HEADS, vae, oracle_train, oracle_labels, c, c.seed + 6, device, on_step)
    numbers = _classifier_numbers(classifier, vae, _held_out(vae, c, device), device)
    card = {
        "spurious_concept": SPURIOUS_CONCEPT,
        "awning_share": {"market": MARKET_AWNING_SHARE, "other concepts": OTHER_AWNING_SHARE},
        "config": asdict(c),
        "classifier_accuracy": numbers["accuracy"],
        "classifier_market_rate": numbers["market_rate"],
        "oracle_accuracy": accuracy(oracle, vae, oracle_held, oracle_labels, device),
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    classifier.save(out_dir / CLASSIFIER_NAME, _classifier_metadata(classifier.width, c.seed))
    oracle.save(out_dir / ORACLE_NAME, {"trained_on": "VAE round-tripped renders of the bias-lab world: awning "
                                                      f"independent, {EMPTY_SHARE:.0%} without object"})
    atomic_write_text(out_dir / CARD_NAME, json.dumps(card, indent=2) + "\n")
    if second is not None:
        card = second_classifier_pretrain(vae, out_dir, second, device, on_step)
    return card
