"""RS-Corrector: prior fit and file, K=0 bit-identity, correction toward the fair side, frozen weights, CLI."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json

import pytest
import torch

from scoft_train.cli import main
from scoft_train.rscorrector import encode_latents, fit_prior, load_prior, sample_corrected
from scoft_train.sample_data import CCUB_DEMO_DIR
from scoft_train.sampling import sample_tensor

PROMPTS = ["a house at dusk", "a family meal"]
SEEDS = [5, 6]
FAST = dict(steps=6, cfg=5.0)


def _stripes(count: int, seed: int, vertical: bool) -> torch.Tensor:
    """[count, 3, 64, 64] in [-1, 1]: two random colours in 8 px stripes, vertical or horizontal."""
    colours = torch.rand(count, 2, 3, 1, 1, generator=torch.Generator().manual_seed(seed))
    axis = torch.arange(64)[None, :] if vertical else torch.arange(64)[:, None]
    mask = ((axis // 8) % 2).float().expand(64, 64)
    return (colours[:, 0] * mask + colours[:, 1] * (1 - mask)) * 2 - 1


@pytest.fixture(scope="module")
def world(tiny_bundle):
    """The tiny model with its VAE scaling factor set so latents have unit std (what SD's
    0.18215 does for its VAE; the random tiny VAE's latents are ~0.05), and a prior fitted on
    a world its random VAE can see: fair = vertical stripes, stereotypical = horizontal."""
    vae = copy.deepcopy(tiny_bundle.vae)
    probe = encode_latents(tiny_bundle, _stripes(8, 99, True))
    vae.register_to_config(scaling_factor=vae.config.scaling_factor / float(probe.std()))
    bundle = dataclasses.replace(tiny_bundle, vae=vae)
    prior = fit_prior(bundle, _stripes(24, 0, True), _stripes(24, 1, False), steps=150, draws=16, heldout=0.33)
    return bundle, prior


def _checksums(bundle) -> dict[str, str]:
    return {
        name: hashlib.sha256(b"".join(t.detach().cpu().numpy().tobytes()
                                      for t in getattr(bundle, name).state_dict().values())).hexdigest()
        for name in ("unet", "vae", "text_encoder")
    }


def test_prior_separates_held_out_images(world):
    _, prior = world
    by_level = {int(t): a for t, a in json.loads(prior.info["heldout_accuracy_by_timestep"]).items()}
    assert prior.info["heldout_fair"] == "8" and prior.info["heldout_stereo"] == "8"
    assert prior.heldout_accuracy > 0.55
    low_noise = [a for t, a in by_level.items() if t < 300]
    assert sum(low_noise) / len(low_noise) > 0.6


def test_k0_reproduces_plain_sampler_bit_for_bit(world):
    bundle, prior = world
    plain = sample_tensor(bundle, PROMPTS, SEEDS, **FAST)
    for settings in (dict(last_k=0), dict(last_k=3, w_prior=0.0, w_direct=0.0)):
        assert torch.equal(sample_corrected(bundle, prior, PROMPTS, SEEDS, **FAST, **settings).images, plain)


def test_correction_moves_toward_fair_side_weights_frozen(world):
    bundle, prior = world
    before = _checksums(bundle)
    baseline = sample_corrected(bundle, prior, PROMPTS, SEEDS, last_k=0, **FAST)
    logs = []
    with torch.inference_mode():  # as a ComfyUI node calls it
        corrected = sample_corrected(bundle, prior, PROMPTS, SEEDS, last_k=3, m_steps=2, eta=0.2, **FAST,
                                     on_step=lambda step, total, log: logs.append(log))
    assert (prior.score(bundle, corrected.latents) > prior.score(bundle, baseline.latents)).all()
    corrected_logs = [log for log in logs if "rs/score_after" in log]
    assert len(corrected_logs) == 3 and all(log["rs/score_after"] > log["rs/score_before"] for log in corrected_logs)
    assert (corrected.images - baseline.images).abs().max() > 1e-3
    assert _checksums(bundle) == before
    assert not any(p.requires_grad for p in bundle.unet.parameters())
    assert not any(p.requires_grad for p in prior.head.parameters())
    direct_only = sample_corrected(bundle, prior, PROMPTS, SEEDS, last_k=3, m_steps=2, eta=0.2, w_prior=0.0,
                                   **FAST)
    assert not torch.equal(direct_only.latents, corrected.latents)
    assert not torch.equal(direct_only.latents, baseline.latents)


def test_prior_file_round_trips_and_refuses_other_models(world, tmp_path):
    bundle, prior = world
    path = prior.save(tmp_path / "prior.safetensors")
    loaded = load_prior(path, bundle)
    assert loaded.info == prior.info and loaded.info["model_fingerprint"] == bundle.fingerprint
    assert loaded.info["steps"] == "150" and loaded.info["fair_size"] == "24"
    assert torch.equal(loaded.fair_refs, prior.fair_refs) and torch.equal(loaded.stereo_refs, prior.stereo_refs)
    latents = prior.fair_refs[:3]
    assert torch.equal(loaded.score(bundle, latents), prior.score(bundle, latents))
    other = dataclasses.replace(bundle, fingerprint="0123456789abcdef")
    with pytest.raises(ValueError, match="fitted on model"):
        load_prior(path, other)
    assert load_prior(path, other, force=True).fingerprint == bundle.fingerprint


def test_bad_settings_are_refused(world):
    bundle, prior = world
    with pytest.raises(ValueError, match="last_k"):
        sample_corrected(bundle, prior, PROMPTS, SEEDS, steps=3, last_k=3)
    with pytest.raises(ValueError, match="scheduler"):
        sample_corrected(bundle, prior, PROMPTS, SEEDS, scheduler="lms", **FAST)
    with pytest.raises(ValueError, match="at least 2"):
        fit_prior(bundle, _stripes(1, 0, True), _stripes(4, 1, False), steps=1)


def test_cli_fit_and_sample_with_compare_grid(tmp_path):
    prior_path = tmp_path / "prior.safetensors"
    assert main(["rscorrector", "fit", "--fair", str(CCUB_DEMO_DIR), "--stereo", str(CCUB_DEMO_DIR / "negatives"),
                 "--out", str(prior_path), "--steps", "5", "--draws", "2"]) == 0
    assert load_prior(prior_path).info["fair"] == f"CCUB {CCUB_DEMO_DIR}"
    grid = tmp_path / "grid.png"
    assert main(["rscorrector", "sample", "--prior", str(prior_path), "--prompt", "a house", "--seed", "3",
                 "--steps", "4", "--k", "2", "--m", "1", "--out", str(tmp_path / "out"), "--compare", str(grid)]) == 0
    assert (tmp_path / "out" / "000_seed3.png").is_file() and grid.is_file()


def test_prior_separates_the_bias_lab_world_above_chance():
    """In the bias-lab world (the shipped world model), authentic renders vs the shared
    stereotype rendering of the same scenes: held-out accuracy well above chance."""
    from scoft_train.biaslab.corpus import render_arrays
    from scoft_train.biaslab.evaluate import to_model_range
    from scoft_train.biaslab.render import SceneSpec
    from scoft_train.biaslab.world import CONCEPTS, MINORITY
    from scoft_train.models import load_default_model

    cells = [(concept, culture) for culture in MINORITY for concept in CONCEPTS]

    def renders(stereotype: bool) -> torch.Tensor:
        specs = [SceneSpec(cells[i % len(cells)][0], cells[i % len(cells)][1], stereotype, False, 100 + i)
                 for i in range(36)]
        return to_model_range(render_arrays(specs)[0])

    prior = fit_prior(load_default_model(), renders(False), renders(True), steps=150, draws=8, max_timestep=400, seed=0)
    assert prior.heldout_accuracy > 0.7, prior.info
