"""The bias lab: the world generator, the sample CCUB, the shipped artefacts, and the
pretrain command (smoke mode); the ablation: test_ablation.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scoft_train.assets import BIASLAB_CCUB_DIR, CONTROLNET_DIR, JUDGE_DIR, WEIGHTS_DIR, WORLD_DIR
from scoft_train.biaslab.corpus import balanced_specs, render_arrays, web_corpus, write_ccub
from scoft_train.biaslab.evaluate import judge_accuracy, labels_of, to_model_range
from scoft_train.biaslab.render import SceneSpec, render
from scoft_train.biaslab.training import round_trip
from scoft_train.biaslab.world import CONCEPTS, CULTURE_NAMES, MAJORITY, MINORITY
from scoft_train.cli import main
from scoft_train.data import load_ccub
from scoft_train.judgenet import load_judgenet
from scoft_train.models import load_model


def _saturation(image: np.ndarray) -> float:
    rgb = image.astype(np.float32)
    return float((rgb.max(axis=-1) - rgb.min(axis=-1)).mean())


def test_render_is_deterministic_per_seed():
    spec = SceneSpec("house", "Tisharu", stereotype=False, dusk=False, seed=11)
    first, again = render(spec), render(spec)
    assert first.image.shape == (32, 32, 3) and first.image.dtype == np.uint8
    assert first.depth.shape == (32, 32)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.depth, again.depth)
    other = render(SceneSpec("house", "Tisharu", stereotype=False, dusk=False, seed=12))
    assert not np.array_equal(first.image, other.image)


def test_web_corpus_is_deterministic_and_biased():
    corpus = web_corpus(per_cell=60, seed=3)
    assert corpus == web_corpus(per_cell=60, seed=3)
    assert corpus != web_corpus(per_cell=60, seed=4)
    for group, low, high in ((MAJORITY, 0.0, 0.2), (MINORITY, 0.75, 0.95)):
        share = np.mean([e.spec.stereotype for e in corpus if e.spec.culture in group])
        assert low <= share <= high, (group, share)
    generic = [e for e in corpus if e.generic]
    assert 0.1 < len(generic) / len(corpus) < 0.3
    assert not any(name in e.caption for e in generic for name in CULTURE_NAMES)
    assert all(e.spec.culture in e.caption for e in corpus if not e.generic)
    assert len({e.caption for e in corpus if not e.generic and e.spec.culture == "Tisharu"}) >= 5


def test_stereotype_is_drab_and_shared_authentic_looks_differ():
    """The stereotype rendering is the same drab look for every culture; authentic ones differ."""
    for concept in CONCEPTS:
        authentic = [render(SceneSpec(concept, name, False, False, 5)).image for name in CULTURE_NAMES]
        stereotype = [render(SceneSpec(concept, name, True, False, 5)).image for name in CULTURE_NAMES]
        assert max(_saturation(s) for s in stereotype) < min(_saturation(a) for a in authentic)
        spread = lambda images: np.mean([np.abs(a.astype(int) - b.astype(int)).mean()  # noqa: E731
                                         for i, a in enumerate(images) for b in images[i + 1:]])
        assert spread(stereotype) < spread(authentic) / 2


def test_sample_ccub_passes_the_validator_and_is_reproducible(tmp_path):
    dataset = load_ccub(BIASLAB_CCUB_DIR, resolution=32)
    assert len(dataset) == 100 and dataset.derived == 0
    texts = [record.text for record in dataset.records]
    for name in CULTURE_NAMES:
        assert sum(name in text for text in texts) == 20
    assert all(not any(name in r.generic_text for name in CULTURE_NAMES) for r in dataset.records)
    write_ccub(tmp_path / "ccub")
    assert (tmp_path / "ccub" / "metadata.jsonl").read_bytes() == (BIASLAB_CCUB_DIR / "metadata.jsonl").read_bytes()
    for record in dataset.records[::17]:
        relative = record.image.relative_to(BIASLAB_CCUB_DIR)
        assert (tmp_path / "ccub" / relative).read_bytes() == record.image.read_bytes()


@pytest.fixture(scope="module")
def card():
    return json.loads((WEIGHTS_DIR / "model_card.json").read_text())


def test_shipped_weights_load_within_budget(card):
    from scoft_train.controlnet import load_controlnet

    total = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert total <= 20 * 2**20, f"shipped bias-lab artefacts take {total / 2**20:.1f} MiB"
    bundle = load_model(WORLD_DIR)
    assert bundle.resolution == 32 and bundle.tokenizer.vocab_size == 49408
    controlnet = load_controlnet(CONTROLNET_DIR)
    assert controlnet.config.cross_attention_dim == bundle.unet.config.cross_attention_dim
    bias = card["base_model_bias"]
    assert bias["stereotype"]["minority"] >= 0.7, "the shipped base model must show the designed bias"
    assert min(bias["samples_per_culture"].values()) >= 32


def test_judge_reaches_its_recorded_accuracy_on_fresh_renders(card):
    bundle = load_model(WORLD_DIR)
    judge = load_judgenet(JUDGE_DIR)
    specs = balanced_specs(400, seed=424242)
    images = round_trip(bundle.vae, to_model_range(render_arrays(specs)[0]))
    accuracy = judge_accuracy(judge, images, labels_of(specs))
    for head, recorded in card["judge_accuracy_vae_round_trip"].items():
        assert accuracy[head] >= recorded - 0.03, (head, accuracy[head], recorded)


def test_pretrain_smoke_writes_loadable_artefacts(tmp_path):
    out = tmp_path / "pretrain"
    assert main(["biaslab", "pretrain", "--smoke", "--out", str(out)]) == 0
    smoke = json.loads((out / "model_card.json").read_text())
    assert set(smoke["judge_accuracy_vae_round_trip"]) == {"concept", "signature", "stereotype"}
    assert set(smoke["base_model_bias"]["stereotype"]["per_culture"]) == set(CULTURE_NAMES)
    assert smoke["data"]["web_corpus_images"] == 3 * len(CULTURE_NAMES) * len(CONCEPTS)
    assert (out / "MODEL_CARD.md").is_file()
    bundle = load_model(out / "world")
    judge = load_judgenet(out / "judge")
    assert judge(torch.zeros(1, 3, 32, 32))["signature"].shape == (1, len(CULTURE_NAMES) + 1)
    assert bundle.unet.config.cross_attention_dim == bundle.text_encoder.config.hidden_size
