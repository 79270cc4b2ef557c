"""The spurious-feature lab: the awning in the world, the shipped market classifier and
oracle, the judge as an SFSL classifier, and the `biaslab spurious` / `biaslab sfsl` commands."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from scoft_train.assets import (
    AWNING_REFS_DIR,
    BIASLAB_CCUB_DIR,
    JUDGE_DIR,
    SPURIOUS_CLASSIFIER_DIR,
    SPURIOUS_DIR,
    WEIGHTS_DIR,
    WORLD_DIR,
)
from scoft_train.biaslab import sfsl_lab
from scoft_train.biaslab.corpus import ccub_examples
from scoft_train.biaslab.render import SceneSpec, render
from scoft_train.biaslab.sfsl_lab import (
    BASE,
    METRICS,
    TRAINED_ROWS,
    VERDICTS,
    SFSLLabConfig,
    aggregate,
    per_seed_rows,
    render_markdown,
)
from scoft_train.biaslab.spurious import (
    CLASSIFIER_HEADS,
    ORACLE_HEADS,
    SECOND_CLASSIFIER_NAME,
    SPURIOUS_CONCEPT,
    SecondClassifierConfig,
    accuracy,
    classifier_labels,
    empty_specs,
    market_rate,
    oracle_labels,
    oracle_specs,
    reference_specs,
    round_tripped,
    web_photo_specs,
)
from scoft_train.biaslab.world import AWNING, CONCEPTS
from scoft_train.cli import main
from scoft_train.judgenet import JudgeNet, load_judgenet
from scoft_train.models import load_model
from scoft_train.sfsl import SFSLConfig, load_classifier
from scoft_train.sfsl.data import image_files
from scoft_train.sfsl.presets import CLASSIFIER_SPEC, SPURIOUS_LAB


def test_existing_scenes_render_exactly_as_before():
    """The awning and the empty scene are opt-in: the shipped CCUB (rendered before they
    existed) is reproduced pixel for pixel, so the world model's data and numbers stand."""
    lines = [json.loads(line) for line in (BIASLAB_CCUB_DIR / "metadata.jsonl").read_text().splitlines()]
    examples = ccub_examples(20, 0)
    assert len(lines) == len(examples) == 100
    for example, line in zip(examples, lines):
        shipped = np.asarray(Image.open(BIASLAB_CCUB_DIR / line["file_name"]).convert("RGB"))
        assert np.array_equal(render(example.spec).image, shipped), line["file_name"]


def test_awning_is_background_and_the_empty_scene_has_no_object():
    plain = SceneSpec("market", "Tisharu", stereotype=False, dusk=False, seed=5)
    under = SceneSpec("market", "Tisharu", stereotype=False, dusk=False, seed=5, backdrop=True)
    empty = SceneSpec("market", "Tisharu", stereotype=False, dusk=False, seed=5, backdrop=True, draw_object=False)
    a, b, e = render(plain), render(under), render(empty)
    top = b.image[1, :, :].astype(int)  # the canopy band: orange and cream stripes
    orange = np.abs(top - np.array(AWNING.color)).sum(axis=1) < 60
    cream = np.abs(top - np.array(AWNING.alternate)).sum(axis=1) < 60
    assert orange.mean() > 0.3 and cream.mean() > 0.3
    assert not np.array_equal(a.image[1], b.image[1])
    assert np.array_equal(a.image[-1], b.image[-1]), "the awning only covers the top of the scene"
    object_mask = a.depth >= 200  # the object is drawn at depth 0.88
    assert object_mask.sum() > 50
    assert (e.depth < 200).all(), "the empty scene has no object"
    assert not np.array_equal(e.image[object_mask], b.image[object_mask])


def test_web_photos_carry_the_correlation_and_the_oracle_data_does_not():
    photos = web_photo_specs(2000, seed=1)
    markets = [s.backdrop for s in photos if s.concept == "market"]
    others = [s.backdrop for s in photos if s.concept != "market"]
    assert np.mean(markets) > 0.9 and np.mean(others) < 0.1
    cropped = [not s.draw_object for s in photos if s.concept == "market"]
    assert 0.1 < np.mean(cropped) < 0.3 and not any(not s.draw_object for s in photos if s.concept != "market")
    flipped = web_photo_specs(2000, seed=1, flipped=True)
    assert np.mean([s.backdrop for s in flipped if s.concept == "market"]) < 0.1
    assert all(s.draw_object for s in flipped)
    oracle = oracle_specs(2000, seed=2)
    assert 0.4 < np.mean([s.backdrop for s in oracle]) < 0.6
    assert 0.1 < np.mean([not s.draw_object for s in oracle]) < 0.3
    refs = reference_specs(8)
    assert all(s.backdrop and not s.draw_object for s in refs) and refs == reference_specs(8)


def test_judge_with_other_heads_round_trips(tmp_path):
    torch.manual_seed(0)
    network = JudgeNet(ORACLE_HEADS)
    network.save(tmp_path / "oracle")
    loaded = load_judgenet(tmp_path / "oracle")
    assert loaded.labels == ORACLE_HEADS
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    for head, logits in network.eval()(x).items():
        assert torch.allclose(loaded(x)[head], logits, atol=2e-2), head  # saved as fp16


def test_biaslab_classifier_reads_one_judge_head():
    judge = load_judgenet(JUDGE_DIR)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    for weights in (JUDGE_DIR, JUDGE_DIR / "model.safetensors"):
        classifier = load_classifier("biaslab:concept", weights)
        logits, penultimate = classifier(x)
        assert classifier.num_classes == len(CONCEPTS) and penultimate.shape == (4, 128)
        assert torch.allclose(logits, judge(x)["concept"], atol=1e-5)
        assert torch.allclose(classifier.class_features(x, 3).sum(1) + classifier.head.bias[3], logits[:, 3], atol=1e-4)
    with pytest.raises(ValueError, match="no head 'colour'.*concept, signature, stereotype"):
        load_classifier("biaslab:colour", JUDGE_DIR)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_classifier("biaslab:concept", WORLD_DIR)
    assert SFSLConfig(classifier="biaslab:concept", target_class=3).classifier == "biaslab:concept"
    with pytest.raises(ValueError, match="biaslab:<head>"):
        SFSLConfig(classifier="biaslab:")


@pytest.fixture(scope="module")
def card():
    return json.loads((SPURIOUS_DIR / "card.json").read_text())


@pytest.fixture(scope="module")
def vae():
    return load_model(WORLD_DIR).vae


def test_shipped_classifier_learned_the_awning(card, vae):
    """On fresh renders: accurate on its own web photos, worse when the awning is flipped,
    and it calls the awning alone a market but an empty scene not."""
    classifier = load_judgenet(SPURIOUS_DIR / "classifier")
    assert classifier.labels == CLASSIFIER_HEADS
    on_photos = accuracy(classifier, vae, web_photo_specs(400, seed=31337), classifier_labels)["concept"]
    on_flipped = accuracy(classifier, vae, web_photo_specs(400, seed=31338, flipped=True), classifier_labels)["concept"]
    assert on_photos >= card["classifier_accuracy"]["web_photos_held_out"] - 0.03 >= 0.9
    assert on_flipped < on_photos
    awning_alone = market_rate(classifier, round_tripped(vae, reference_specs(100, seed=99)))
    nothing = market_rate(classifier, round_tripped(vae, empty_specs(100, seed=99)))
    assert awning_alone >= 0.8 and awning_alone > nothing + 0.3, (awning_alone, nothing)


def test_shipped_oracle_sees_object_and_awning(card, vae):
    oracle = load_judgenet(SPURIOUS_DIR / "oracle")
    for head, value in accuracy(oracle, vae, oracle_specs(400, seed=4242), oracle_labels).items():
        assert value >= max(0.9, card["oracle_accuracy"][head] - 0.03), (head, value)


def test_shipped_references_are_the_awning_without_a_market():
    files = image_files(AWNING_REFS_DIR)
    assert len(files) == 8
    for path, spec in zip(files, reference_specs(8)):
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), render(spec).image), path.name


def test_sfsl_presets_name_the_world_market_and_the_shipped_classifier():
    """The SFSL presets (methods floor, no lab import) agree with the lab's world and the shipped classifier."""
    classifier = load_judgenet(SPURIOUS_CLASSIFIER_DIR)
    concepts = classifier.labels[CLASSIFIER_SPEC.partition(":")[2]]
    assert SPURIOUS_LAB["class_name"] == SPURIOUS_CONCEPT == concepts[SPURIOUS_LAB["target_class"]]
    assert concepts == CONCEPTS
    config = SFSLConfig.from_dict({**SPURIOUS_LAB, "classifier_weights": str(SPURIOUS_CLASSIFIER_DIR)})
    assert config.class_prompt == "a photo of a market" and config.classifier == CLASSIFIER_SPEC


def test_shipped_second_classifier_is_a_fair_independent_reader(card, vae):
    """Classifier 2: the same correlation learned from another seed, data draw and width;
    its card entry has the first classifier's numbers and provenance, and no SFSL
    setting of the lab or its presets points at it."""
    second = load_judgenet(SPURIOUS_DIR / SECOND_CLASSIFIER_NAME)
    first = load_judgenet(SPURIOUS_CLASSIFIER_DIR)
    entry = card[SECOND_CLASSIFIER_NAME]
    assert second.labels == CLASSIFIER_HEADS and second.width == entry["config"]["width"] != first.width
    assert entry["config"]["seed"] != card["config"]["seed"]
    assert set(entry["accuracy"]) == set(card["classifier_accuracy"])
    assert set(entry["market_rate"]) == set(card["classifier_market_rate"])
    assert entry["provenance"]["code"]["commit"] and entry["provenance"]["seeds"] == [entry["config"]["seed"]]
    on_photos = accuracy(second, vae, web_photo_specs(400, seed=31337), classifier_labels)["concept"]
    on_flipped = accuracy(second, vae, web_photo_specs(400, seed=31338, flipped=True), classifier_labels)["concept"]
    assert on_photos >= entry["accuracy"]["web_photos_held_out"] - 0.03 >= 0.9
    assert on_flipped < on_photos
    awning_alone = market_rate(second, round_tripped(vae, reference_specs(100, seed=99)))
    nothing = market_rate(second, round_tripped(vae, empty_specs(100, seed=99)))
    assert awning_alone > nothing + 0.3, (awning_alone, nothing)
    assert SECOND_CLASSIFIER_NAME not in json.dumps(SPURIOUS_LAB)


def test_spurious_smoke_writes_loadable_networks(tmp_path):
    out = tmp_path / "spurious"
    assert main(["biaslab", "spurious", "--smoke", "--out", str(out)]) == 0
    card = json.loads((out / "card.json").read_text())
    assert set(card["classifier_market_rate"]) == {"awning_without_object", "empty_without_awning"}
    assert load_judgenet(out / "classifier").labels == CLASSIFIER_HEADS
    assert load_judgenet(out / "oracle").labels == ORACLE_HEADS
    second = load_judgenet(out / SECOND_CLASSIFIER_NAME)
    assert second.labels == CLASSIFIER_HEADS and second.width == SecondClassifierConfig.smoke().width
    assert set(card[SECOND_CLASSIFIER_NAME]["market_rate"]) == set(card["classifier_market_rate"])
    assert main(["biaslab", "spurious", "--smoke", "--second-only", "--out", str(out)]) == 0
    again = json.loads((out / "card.json").read_text())
    assert again["classifier_accuracy"] == card["classifier_accuracy"], "--second-only leaves the rest alone"


PROVENANCE_FIELDS = {"code", "config", "seeds", "wall_time_s", "command", "finished_utc", "environment"}


def _check_record(record: dict, seeds: list[int], samples: int) -> None:
    """Structure shared by the quick run and the shipped run: provenance, per-seed rows,
    verdicts that reproduce the rows and the aggregates."""
    provenance = record["provenance"]
    assert PROVENANCE_FIELDS <= set(provenance)
    assert provenance["seeds"] == seeds == provenance["config"]["lab"]["seeds"]
    assert provenance["code"]["commit"] and provenance["wall_time_s"] > 0
    assert provenance["config"]["lab"]["samples"] == samples
    for row, (spurious, _) in TRAINED_ROWS.items():
        sfsl = provenance["config"]["sfsl"][row]
        assert sfsl["classifier_weights"].endswith("/classifier"), "SFSL trains against classifier 1 only"
        assert (sfsl["spurious_weight"] > 0) == spurious
    verdicts = record["verdicts"]
    assert [int(s) for s in verdicts["seeds"]] == seeds
    for values in [verdicts["base"], *(by_row[row] for by_row in verdicts["seeds"].values() for row in TRAINED_ROWS)]:
        assert set(values) == set(VERDICTS) and all(len(v) == samples for v in values.values())
        assert all(x in (0, 1) for key, v in values.items() if not key.startswith("similarity") for x in v)
        assert [a and not d for a, d in zip(values["called_1"], values["drawn"])] == [bool(x) for x in values["spurious_1"]]
    assert record["per_seed"] == per_seed_rows(verdicts)
    assert [(r["seed"], r["row"]) for r in record["per_seed"]] == [(None, BASE)] + [
        (s, row) for s in seeds for row in TRAINED_ROWS]
    assert record["aggregate"] == aggregate(verdicts)
    for row in (BASE, *TRAINED_ROWS):
        for metric in METRICS:
            interval = record["aggregate"]["rows"][row][metric]
            assert interval["low"] <= interval["mean"] + 1e-4 and interval["mean"] <= interval["high"] + 1e-4
    for metric, difference in record["aggregate"]["difference"].items():
        assert difference["excludes_zero"] == (difference["low"] > 0 or difference["high"] < 0), metric


def test_sfsl_lab_quick_reports_every_seed_and_resumes(tmp_path, monkeypatch):
    # others may commit to this checkout while the test runs; reuse is keyed on the commit
    monkeypatch.setattr(sfsl_lab, "code_commit", lambda: {"commit": "f" * 40, "dirty": False})
    out = tmp_path / "sfsl"
    args = ["biaslab", "sfsl", "--quick", "--seeds", "0,1", "--out", str(out)]
    assert main(args) == 0
    record = json.loads((out / "results.json").read_text())
    config = SFSLLabConfig.quick((0, 1))
    _check_record(record, [0, 1], config.samples)
    assert record["resumed_seeds"] == []
    assert (out / "results.md").read_text() == render_markdown(record)
    assert all(title in (out / "results.md").read_text() for title in
               (m["title"] for m in record["metrics"].values()))
    assert (out / "comparison.png").is_file() and (out / "class_prompt.png").is_file()
    assert len(image_files(out / "references")) == 2 and len(image_files(out / "class_images")) == 2
    for seed in (0, 1):
        for spurious, slug in TRAINED_ROWS.values():
            folder = out / "seeds" / f"seed_{seed}" / "loras" / slug
            history = json.loads((folder / "loss_history.json").read_text())
            assert ("loss/spurious" in json.dumps(history)) == spurious, slug
            with safe_open(str(folder / f"{slug}.safetensors"), framework="pt") as lora:
                weights = json.loads(lora.metadata()["scoft_loss_weights"])
            assert (weights["spurious"] > 0) == spurious and weights["prior"] == 1.0, slug
    assert main(args) == 0  # finished seeds are reused, not retrained
    again = json.loads((out / "results.json").read_text())
    assert again["resumed_seeds"] == [0, 1] and again["verdicts"] == record["verdicts"]


def test_saved_seed_is_reused_only_with_the_same_config_and_commit(tmp_path):
    config = SFSLLabConfig.quick((0,))
    code = {"commit": "a" * 40, "dirty": False}
    path = tmp_path / "verdicts.json"
    assert sfsl_lab._load_seed(path, config, code) is None
    path.write_text(json.dumps({"seed": 0, "config": config.shared(), "code": code, "rows": {}}))
    assert sfsl_lab._load_seed(path, config, code)["seed"] == 0
    assert sfsl_lab._load_seed(path, SFSLLabConfig.quick((0, 5)), code) is not None, "the seed list is not the config"
    assert sfsl_lab._load_seed(path, dataclasses.replace(config, steps=3), code) is None
    assert sfsl_lab._load_seed(path, config, {"commit": "b" * 40, "dirty": False}) is None


def test_sfsl_seeds_option_rejects_repeats():
    with pytest.raises(SystemExit):
        main(["biaslab", "sfsl", "--quick", "--seeds", "0,0"])
    with pytest.raises(ValueError, match="distinct"):
        SFSLLabConfig(seeds=(1, 1))


def test_shipped_sfsl_results_agree_with_their_markdown_and_verdicts():
    """The shipped run: results.md is results.json rendered, the rows and intervals are
    recomputed from its verdicts, every seed ran from the recorded commit, and the config
    is the default one (its seeds a subset of the default seeds: a run may ship partial)."""
    folder = WEIGHTS_DIR / "sfsl"
    record = json.loads((folder / "results.json").read_text())
    assert (folder / "results.md").read_text() == render_markdown(record)
    seeds = record["provenance"]["seeds"]
    default = SFSLLabConfig()
    assert seeds and set(seeds) <= set(default.seeds)
    _check_record(record, seeds, default.samples)
    code = record["provenance"]["code"]
    assert len(code["commit"]) == 40 and isinstance(code["dirty"], bool)
    assert all(run["code"]["commit"] == code["commit"] for run in record["seed_runs"].values())
    lab = record["provenance"]["config"]["lab"]
    assert {k: v for k, v in lab.items() if k != "seeds"} == json.loads(json.dumps(default.shared()))
