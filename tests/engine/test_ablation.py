"""The bias-lab ablation's honesty rules: scorers no loss loads, a label-free feature space,
intervals over seeds and prompts, held-out prompts that are held out, provenance, and
results.md rendered from results.json (the shipped pairs agree)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scoft_train.assets import BIASLAB_CCUB_DIR, WEIGHTS_DIR
from scoft_train.biaslab import ablation_report, corpus, memorization, sfsl_lab
from scoft_train.biaslab.ablate import BRANCH_ROWS, CIRCULAR, ROWS, AblateConfig, training_plan
from scoft_train.biaslab.artefacts import load_world
from scoft_train.biaslab.corpus import (
    CCUB_TEMPLATES, CULTURE_TEMPLATES, GENERIC_TEMPLATES, balanced_specs, ccub_examples, render_arrays, web_corpus,
)
from scoft_train.biaslab.evaluate import judge_accuracy, labels_of, to_model_range
from scoft_train.biaslab.intervals import cut_interval, difference_interval, excludes_zero, rate_interval
from scoft_train.biaslab.prompt_sets import (
    HELD_OUT_CELLS, UNSEEN_TEMPLATES, VALIDATION_TEMPLATES, evaluation_prompts, validation_prompts,
)
from scoft_train.biaslab.render import SceneSpec, render
from scoft_train.biaslab.rules import load_rules, rule_accuracy
from scoft_train.biaslab.scorers import CARD, RULES, SECOND_JUDGE, SSL, check_independent
from scoft_train.biaslab.second_judge import ARCH, load_second_judge
from scoft_train.biaslab.training import round_trip
from scoft_train.biaslab.world import MINORITY
from scoft_train.cli import main
from scoft_train.data import load_ccub
from scoft_train.features import build_feature_distance

ABLATION_DIR = WEIGHTS_DIR / "ablation"
BRANCH_DIR = WEIGHTS_DIR / "branch"
MEMORIZATION_DIR = WEIGHTS_DIR / "memorization"


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((WEIGHTS_DIR / CARD).read_text())


@pytest.fixture(scope="module")
def vae():
    return load_world().vae


def _fresh(vae, count: int, seed: int):
    specs = balanced_specs(count, seed)
    return specs, round_trip(vae, to_model_range(render_arrays(specs)[0]))


# --- independence: a loss never loads the evaluator ---

def test_no_headline_row_trains_against_a_scorer():
    for seed in AblateConfig().seeds:
        check_independent(training_plan(AblateConfig.branch(), WEIGHTS_DIR, seed), WEIGHTS_DIR)
        plan = training_plan(AblateConfig(), WEIGHTS_DIR, seed)
        check_independent(plan, WEIGHTS_DIR, allowed=(CIRCULAR,))
        with pytest.raises(ValueError, match="never load the evaluator"):
            check_independent(plan, WEIGHTS_DIR)  # the circular row reads the development judge
        for row, config in plan.items():
            if row != CIRCULAR and config.preset in ("FT+MP", "FT+MPC"):
                assert config.contrastive_backbone == "biaslab-ssl" and Path(config.contrastive_weights).name == SSL


def test_a_branch_row_sets_its_branch_and_scales_only_the_branch_losses():
    branch = training_plan(AblateConfig.branch(), WEIGHTS_DIR, 0)
    for row, setting in BRANCH_ROWS.items():
        weights, reference = branch[row].weights, branch["FT+MPC"].weights
        assert (branch[row].denoise_steps, branch[row].contrastive_every) == (setting.denoise_steps, setting.every)
        assert (weights.perceptual, weights.contrastive) == pytest.approx(
            (setting.factor * reference.perceptual, setting.factor * reference.contrastive))
        assert weights.ldm == reference.ldm and branch[row].preset == "FT+MPC"
        assert branch[row].weight("mem") == (reference.mem if setting.memorization else 0.0)
        assert branch[row].cfg == (branch["FT+MPC"].cfg if setting.cfg is None else setting.cfg)


@pytest.mark.parametrize("target", [SECOND_JUDGE, "judge"])
def test_a_loss_pointing_at_a_scoring_network_is_refused(target):
    plan = training_plan(AblateConfig(), WEIGHTS_DIR, 0)
    bad = dataclasses.replace(plan["FT+MPC"], perceptual_backbone="biaslab-judge",
                              perceptual_weights=str(WEIGHTS_DIR / target))
    with pytest.raises(ValueError, match="row 'FT\\+MPC': the perceptual loss reads a scoring network"):
        check_independent({"FT+MPC": bad}, WEIGHTS_DIR)
    default_judge = dataclasses.replace(plan["FT"], contrastive_backbone="biaslab-judge", contrastive_weights=None)
    with pytest.raises(ValueError, match="contrastive loss reads a scoring network"):
        check_independent({"FT": default_judge}, WEIGHTS_DIR)


# --- the prompt sets ---

def test_unseen_wordings_are_in_no_ccub_or_web_corpus_caption():
    captions = {e.caption.removesuffix(" at dusk") for e in web_corpus(20, seed=0)}
    captions |= {e.caption.removesuffix(" at dusk") for e in ccub_examples()}
    for template in UNSEEN_TEMPLATES + VALIDATION_TEMPLATES:
        assert template not in CCUB_TEMPLATES
    for template in UNSEEN_TEMPLATES:
        assert template not in CULTURE_TEMPLATES + GENERIC_TEMPLATES
    prompts = evaluation_prompts()
    unseen = [p for p in prompts if p[3] == "unseen"]
    assert unseen and not {p[0] for p in unseen} & captions
    validation = {p[0] for p in validation_prompts()}
    assert not validation & {p[0] for p in prompts}, "the RS-Corrector sweep must not see a test prompt"
    assert {(p[1], p[2]) for p in prompts if p[3] == "held-out cells"} == set(HELD_OUT_CELLS)
    assert all((p[1], p[2]) not in HELD_OUT_CELLS for p in prompts if p[3] != "held-out cells")
    assert {c for c, _ in HELD_OUT_CELLS} == set(MINORITY)


# --- intervals ---

def test_intervals_cover_the_spread_and_pair_differences():
    rng = np.random.default_rng(0)
    constant = np.full((5, 20), 0.4)
    assert rate_interval(constant) == {"mean": pytest.approx(0.4), "low": pytest.approx(0.4), "high": pytest.approx(0.4)}
    noisy = rng.random((5, 40))
    interval = rate_interval(noisy)
    assert interval["low"] < noisy.mean() < interval["high"] and interval["high"] - interval["low"] < 0.3
    assert not excludes_zero(difference_interval(noisy, noisy))
    assert difference_interval(noisy, noisy)["high"] == pytest.approx(0)
    lower = np.clip(noisy - 0.3, 0, 1)
    assert excludes_zero(difference_interval(lower, noisy)) and difference_interval(lower, noisy)["high"] < 0
    base = rng.random((1, 40))
    assert difference_interval(noisy, base)["mean"] == pytest.approx(noisy.mean() - base.mean())
    with pytest.raises(ValueError, match="same prompts"):
        difference_interval(noisy, rng.random((5, 10)))


def test_cut_interval_is_the_share_of_the_base_rate_removed_paired_by_prompt():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 1.0, (1, 40))
    exact = cut_interval(0.4 * np.repeat(base, 5, axis=0), base)
    assert exact == {"mean": pytest.approx(0.6), "low": pytest.approx(0.6), "high": pytest.approx(0.6)}
    noisy = np.clip(0.4 * base + rng.normal(0, 0.1, (5, 40)), 0, 1)
    interval = cut_interval(noisy, base)
    assert interval["low"] < 1 - noisy.mean() / base.mean() < interval["high"] and interval["high"] - interval["low"] < 0.2
    assert cut_interval(base, base)["mean"] == pytest.approx(0) and not excludes_zero(cut_interval(base, base))
    assert cut_interval(noisy, np.zeros((1, 40))) is None
    with pytest.raises(ValueError, match="same prompts"):
        cut_interval(noisy, rng.random((1, 10)))


# --- the shipped scorers and the label-free encoder ---

def test_second_judge_is_another_network_and_reads_fresh_renders(card, vae):
    second = load_second_judge(WEIGHTS_DIR / SECOND_JUDGE)
    assert "arch" not in json.loads((WEIGHTS_DIR / "judge" / "config.json").read_text())
    assert json.loads((WEIGHTS_DIR / SECOND_JUDGE / "config.json").read_text())["arch"] == ARCH
    specs, images = _fresh(vae, 300, seed=515151)
    accuracy = judge_accuracy(second, images, labels_of(specs))
    for head, recorded in card["second_judge"]["held_out_accuracy_vae_round_trip"].items():
        assert accuracy[head] >= recorded - 0.05, (head, accuracy[head], recorded)
    assert accuracy["stereotype"] > 0.9


def test_rule_scorer_reads_the_worlds_definition(card, vae):
    rules = load_rules(WEIGHTS_DIR / RULES)
    specs, images = _fresh(vae, 300, seed=626262)
    accuracy = rule_accuracy(rules, images, torch.tensor([s.stereotype for s in specs]), [s.culture for s in specs])
    recorded = card["rules"]["accuracy_fresh_renders"]
    assert accuracy["stereotype_balanced_accuracy"] >= recorded["stereotype_balanced_accuracy"] - 0.05 > 0.85
    clean = to_model_range(np.stack([render(SceneSpec("house", "Tisharu", stereotype, False, 3)).image
                                     for stereotype in (False, True)]))
    verdict = rules.verdicts(clean, ["Tisharu", "Tisharu"])
    assert verdict["stereotype"].tolist() == [False, True] and verdict["relevant"].tolist() == [True, False]


def test_label_free_encoder_is_a_feature_backbone_that_separates_looks(card):
    assert card["ssl"]["labels_read"] == "none"
    config = json.loads((WEIGHTS_DIR / SSL / "config.json").read_text())
    assert config["heads"] == {}, "the label-free encoder has no classification head"
    distance = build_feature_distance("biaslab-ssl")
    specs = [SceneSpec("meal", "Ombresk", False, False, seed) for seed in range(6)]
    specs += [SceneSpec("meal", "Ombresk", True, False, seed) for seed in range(6)]
    images = to_model_range(render_arrays(specs)[0])
    authentic, stereotype = images[:6], images[6:]
    within = distance(authentic[:3], authentic[3:]).mean()
    across = distance(authentic[:3], stereotype[:3]).mean()
    assert across > 1.5 * within, (float(across), float(within))
    image = authentic[:1].requires_grad_(True)
    distance(image, stereotype[:1]).sum().backward()
    assert image.grad.abs().sum() > 0, "L_P / L_C need a gradient through the encoder"


# --- the commands, end to end (quick), and the shipped results ---

@pytest.fixture(scope="module")
def quick_ablation(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablate") / "run"
    assert main(["biaslab", "ablate", "--quick", "--out", str(out), "--threads", "2"]) == 0
    return out


def test_ablate_quick_records_rows_sets_scorers_and_provenance(quick_ablation):
    record = json.loads((quick_ablation / "results.json").read_text())
    rows = ["base", *ROWS, "RS-Corrector (best of sweep)"]
    assert list(record["rates"]) == rows and record["rows"][CIRCULAR]["circular"]
    assert not any(record["rows"][r]["circular"] for r in rows if r != CIRCULAR)
    for row in rows:
        for name in ("seen", "unseen", "held-out cells", "all"):
            for scorer in ("second_judge", "rules"):
                interval = record["rates"][row][name][f"{scorer}/stereotype"]["minority"]
                assert interval["low"] <= interval["mean"] <= interval["high"]
    assert set(record["per_seed"]["FT+MPC"]) == {"0", "1"} and set(record["per_seed"]["base"]) == {"None"}
    assert "FT+MPC − FT" in record["differences"]
    provenance = record["provenance"]
    assert len(provenance["code"]["commit"]) == 40 and provenance["seeds"] == [0, 1]
    assert provenance["config"]["steps"] == AblateConfig.quick().steps and provenance["wall_time_s"] > 0
    assert (quick_ablation / "results.md").read_text() == ablation_report.render_markdown(record)
    ccub_names = [json.loads(line)["file_name"] for line in (quick_ablation / "ccub/metadata.jsonl").read_text().splitlines()]
    assert not [n for n in ccub_names for c, k in HELD_OUT_CELLS if f"/{c.lower()}_{k}_" in n]
    assert len(ccub_names) < len((BIASLAB_CCUB_DIR / "metadata.jsonl").read_text().splitlines())
    for name in ("comparison.png", "grids/base.png", "grids/FT_MPC.png", "units/rs_sweep.json"):
        assert (quick_ablation / name).is_file(), name


def test_ablate_resumes_from_finished_units(quick_ablation, caplog):
    units = sorted((quick_ablation / "units").glob("*.npz"))
    stamps = {p: p.stat().st_mtime_ns for p in units}
    assert main(["biaslab", "ablate", "--quick", "--out", str(quick_ablation), "--threads", "2"]) == 0
    assert {p: p.stat().st_mtime_ns for p in units} == stamps, "finished units must not be redone"
    plan = quick_ablation / "units" / "plan.json"
    recorded = plan.read_text()
    plan.write_text(json.dumps(json.loads(recorded) | {"steps": 999}))
    try:
        assert main(["biaslab", "ablate", "--quick", "--out", str(quick_ablation)]) != 0
        assert "holds units of another configuration" in caplog.text
    finally:
        plan.write_text(recorded)


def test_branch_quick_reuses_the_ablation_units_and_times_each_branch_setting(quick_ablation, tmp_path, caplog):
    shared = {p: p.stat().st_mtime_ns for p in (quick_ablation / "units").glob("*.npz")}
    out = tmp_path / "branch"
    caplog.set_level("INFO")
    assert main(["biaslab", "branch", "--quick", "--seeds", "0", "--out", str(out), "--run", str(quick_ablation),
                 "--threads", "2"]) == 0
    assert {p: p.stat().st_mtime_ns for p in shared} == shared, "the ablation's units are reused, not redone"
    assert "training FT, seed 0" not in caplog.text and "training FT+MPC, S=1, every 20, seed 0" in caplog.text
    assert (quick_ablation / "units" / "FT_MPC_S_1_every_20_seed0.npz").is_file() and not (out / "units").exists()
    record = json.loads((out / "results.json").read_text())
    assert list(record["rates"]) == ["base", "FT", "FT+MPC", *BRANCH_ROWS] and record["rs_corrector_sweep"] is None
    for row, branch in BRANCH_ROWS.items():
        info = record["rows"][row]
        assert (info["denoise_steps"], info["contrastive_every"]) == (branch.denoise_steps, branch.every)
        assert (info.get("branch_weight_factor", 1.0), info.get("memorization_loss", True)) == (
            branch.factor, branch.memorization)
        assert info.get("branch_cfg") == branch.cfg
        assert {f"{row} − FT", f"{row} − FT+MPC"} <= set(record["differences"])
        assert record["image_metrics"][row]["train_seconds"]["mean"] > 0
    table = (out / "results.md").read_text()
    assert table == ablation_report.render_markdown(record)
    assert "Decoded-branch settings: cost and effect" in table and "RS-Corrector sweep" not in table
    assert "| FT+MPC, S=1, every 20 | 1 | 20 | x1 | on |" in table and "| FT | - | - | - | - |" in table
    assert "| FT+MPC, S=4, every 20, L_P/L_C x4 | 4 | 20 | x4 | on |" in table
    assert "| FT+PC, S=4 (no L_M) | 4 | 5 | x1 | off |" in table
    assert set(record["cuts_against_base"]) == {"FT", "FT+MPC", *BRANCH_ROWS} and "## Cut of the minority" in table


def test_branch_rows_pick_what_trains_for_a_replication_on_new_seeds(quick_ablation, tmp_path):
    out = tmp_path / "replication"
    assert main(["biaslab", "branch", "--quick", "--seeds", "0", "--row", "FT", "--row", "FT+MPC, S=4", "--out",
                 str(out), "--run", str(quick_ablation), "--threads", "2"]) == 0
    record = json.loads((out / "results.json").read_text())
    assert list(record["rates"]) == ["base", "FT", "FT+MPC, S=4"] and set(record["differences"]) == {
        "FT − base", "FT+MPC, S=4 − FT"}
    rate = {row: record["rates"][row]["all"]["second_judge/stereotype"]["minority"]["mean"] for row in record["rates"]}
    cut = record["cuts_against_base"]["FT+MPC, S=4"]["all"]["second_judge"]
    assert cut is None if rate["base"] == 0 else cut["mean"] == pytest.approx(1 - rate["FT+MPC, S=4"] / rate["base"])
    assert (out / "results.md").read_text() == ablation_report.render_markdown(record)


def test_memorization_quick_records_rates_and_renders(tmp_path):
    out = tmp_path / "memorization"
    assert main(["biaslab", "memorization", "--quick", "--out", str(out), "--threads", "2"]) == 0
    record = json.loads((out / "results.json").read_text())
    assert set(record["readings"]) == {"copy", "near_copy", "distance"}
    for reading in record["readings"].values():
        assert set(reading["rates"]) == {"base", "FT", "FT+M"} and "FT+M − FT" in reading["differences"]
    assert record["training_images"] == 5 and record["provenance"]["seeds"] == [0, 1]
    distances = record["sample_distances"]["FT"]["1"]
    assert len(distances) == 5 * 2 and record["readings"]["distance"]["per_seed"]["FT"]["1"] == pytest.approx(
        sum(distances) / len(distances), abs=1e-4)
    calibration = record["calibration"]
    assert calibration["null_renders"] == 5 * 4 and calibration["null_min"] <= calibration["near_copy_threshold"]
    assert (out / "results.md").read_text() == memorization.render_markdown(record)


def test_near_copy_threshold_flags_at_most_its_share_of_the_null_and_is_set_by_the_cells_redraws(tmp_path):
    null = torch.linspace(0.1, 0.3, 200)
    threshold = memorization.near_copy_threshold(null, 0.01)
    assert (null < threshold).float().mean() <= 0.01 and (null <= threshold).float().mean() > 0.01
    redraws = corpus.cell_renders([("house", "Velmora", False), ("meal", "Tisharu", True)], 3, seed=0)
    assert redraws.shape == (6, 3, 32, 32) and redraws.min() >= -1 and redraws.max() <= 1
    assert not torch.equal(redraws[0], redraws[1])


def test_memorization_refuses_a_ccub_that_is_not_in_the_lab_layout(tmp_path):
    folder = tmp_path / "ccub"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(folder / "images" / "holiday.png")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "images/holiday.png", "text": "a house"}) + "\n")
    with pytest.raises(ValueError, match="holiday.png: not a bias-lab CCUB image"):
        memorization.training_cells(load_ccub(folder, resolution=32))


@pytest.mark.parametrize("folder, render", [(ABLATION_DIR, ablation_report.render_markdown),
                                            (BRANCH_DIR, ablation_report.render_markdown),
                                            (WEIGHTS_DIR / "replication", ablation_report.render_markdown),
                                            (WEIGHTS_DIR / "cheap_branch", ablation_report.render_markdown),
                                            (MEMORIZATION_DIR, memorization.render_markdown),
                                            (WEIGHTS_DIR / "sfsl", sfsl_lab.render_markdown)])
def test_shipped_results_md_is_rendered_from_shipped_results_json(folder, render):
    record = json.loads((folder / "results.json").read_text())
    assert (folder / "results.md").read_text() == render(record)
    provenance = record["provenance"]
    assert len(provenance["code"]["commit"]) == 40 and provenance["code"]["dirty"] is False
    assert provenance["seeds"] and provenance["wall_time_s"] > 0 and provenance["config"]


def test_scorers_smoke_writes_loadable_artefacts_and_the_model_card(tmp_path):
    out = tmp_path / "weights"
    out.mkdir()
    (out / "model_card.json").write_text((WEIGHTS_DIR / "model_card.json").read_text())
    assert main(["biaslab", "scorers", "--smoke", "--out", str(out), "--threads", "2"]) == 0
    second = load_second_judge(out / SECOND_JUDGE)
    assert second(torch.zeros(2, 3, 32, 32))["stereotype"].shape == (2, 2)
    assert 0 < load_rules(out / RULES).stereotype_share < 1
    distance = build_feature_distance("biaslab-ssl", out / SSL)
    assert distance(torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32)).item() > 0
    assert json.loads((out / "model_card.json").read_text())["scorers"]["ssl"]["labels_read"] == "none"
    assert "label-free encoder" in (out / "MODEL_CARD.md").read_text()
