"""The SCoFT trainer (the SCoFT objective in the LoRA loop) on the tiny model: losses, gradient
routing, branch, resume, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors import safe_open

from scoft_train.config import LossWeights, TrainConfig
from scoft_train.data import load_ccub
from scoft_train.generation import branch_timesteps, denoise_to_latent
from scoft_train.losses import contrastive_loss
from scoft_train.sample_data import CCUB_DEMO_DIR
from scoft_train.trainer import NonFiniteLossError, SCoFTTrainer

SMALL = dict(grad_accum=1, rank=4, alpha=8.0, denoise_steps=3, contrastive_every=1, allow_random_backbone=True)


@pytest.fixture(scope="module")
def dataset():
    return load_ccub(CCUB_DEMO_DIR, resolution=64)


def make_trainer(bundle, dataset, tmp_path=None, **changes):
    return SCoFTTrainer(bundle, dataset, TrainConfig(**{**SMALL, **changes}), tmp_path)


def is_lora(name: str) -> bool:
    return "lora_" in name


def test_every_loss_is_finite_with_expected_sign(tiny_bundle, dataset):
    trainer = make_trainer(tiny_bundle, dataset, contrastive_form="hinge")
    losses = trainer.micro_step_losses(trainer.objective.batch())
    assert set(losses) == {"ldm", "mem", "perceptual", "contrastive"}
    for name, value in losses.items():
        assert value.shape == torch.Size([]), name
        assert torch.isfinite(value), name
    assert losses["ldm"] > 0 and losses["perceptual"] > 0
    assert losses["mem"] >= 0 and losses["contrastive"] >= 0


@pytest.mark.parametrize("loss", ["ldm", "mem", "perceptual", "contrastive"])
def test_gradients_reach_lora_and_nothing_else(tiny_bundle, dataset, loss):
    trainer = make_trainer(tiny_bundle, dataset)
    # A nonzero LoRA B matrix, so that L_M (zero at initialisation) has a gradient too.
    with torch.no_grad():
        for name, param in trainer.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    trainer.micro_step_losses(trainer.objective.batch())[loss].backward()
    with_grad = {n for n, p in trainer.unet.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad, f"L_{loss} moved no parameter"
    assert all(is_lora(n) for n in with_grad), sorted(n for n in with_grad if not is_lora(n))[:3]
    frozen = [tiny_bundle.vae, tiny_bundle.text_encoder, tiny_bundle.unet]
    assert all(p.grad is None for module in frozen for p in module.parameters())


def test_bundle_is_not_mutated(tiny_bundle, dataset):
    before = {k: v.clone() for k, v in tiny_bundle.unet.state_dict().items()}
    trainer = make_trainer(tiny_bundle, dataset, steps=2, lr=1e-2)
    trainer.train()
    after = tiny_bundle.unet.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(is_lora(name) for name in after)
    assert not any(module.training for module in tiny_bundle.unet.modules())
    assert not getattr(tiny_bundle.unet, "is_gradient_checkpointing", False)


def test_trained_unet_shares_the_bundles_weights_instead_of_copying_them(tiny_bundle, dataset):
    trainer = make_trainer(tiny_bundle, dataset, gradient_checkpointing=True)
    shared = {p.data_ptr() for p in tiny_bundle.unet.parameters()}
    base = {p.data_ptr() for n, p in trainer.unet.named_parameters() if not is_lora(n)}
    assert base == shared, "the trained UNet holds weights of its own beside the bundle's"
    assert trainer.unet.is_gradient_checkpointing and not tiny_bundle.unet.is_gradient_checkpointing


@pytest.mark.parametrize("mode,expected_index", [("first", 0), ("last", 4), ("random", None)])
def test_branch_records_grad_in_exactly_one_unet_call(tiny_bundle, dataset, mode, expected_index):
    trainer = make_trainer(tiny_bundle, dataset)
    calls: list[bool] = []
    handle = trainer.unet.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    cond = trainer.objective.embed(["a house"])
    z_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    z0 = denoise_to_latent(trainer.unet, tiny_bundle.scheduler, z_t, 700, cond, trainer.objective.embed([""]),
                           steps=5, grad_mode=mode, generator=torch.Generator().manual_seed(3))
    handle.remove()
    assert len(calls) == 5 and sum(calls) == 1
    if expected_index is not None:
        assert calls.index(True) == expected_index
    z0.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainer.unet.named_parameters() if "lora_B" in n)


def test_branch_at_cfg_1_calls_the_unet_on_the_caption_alone_with_the_guided_result(tiny_bundle, dataset):
    trainer = make_trainer(tiny_bundle, dataset)
    unet, scheduler = trainer.unet, tiny_bundle.scheduler
    cond, uncond = trainer.objective.embed(["a house"]), trainer.objective.embed([""])
    z_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    batches: list[int] = []
    handle = unet.register_forward_hook(lambda _m, args, _o: batches.append(args[0].shape[0]))
    z0 = denoise_to_latent(unet, scheduler, z_t, 700, cond, uncond, steps=3, cfg=1.0)
    handle.remove()
    assert batches == [1, 1, 1]
    z, alphas = z_t, scheduler.alphas_cumprod
    timesteps = branch_timesteps(700, 3)
    with torch.no_grad():  # the guided formula, both halves computed, at scale 1
        for i, t in enumerate(timesteps):
            both = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            out_uncond, out_cond = both.chunk(2)
            eps = out_uncond + 1.0 * (out_cond - out_uncond)
            x0 = (z - (1 - alphas[t]).sqrt() * eps) / alphas[t].sqrt()
            if i + 1 < len(timesteps):
                z = alphas[timesteps[i + 1]].sqrt() * x0 + (1 - alphas[timesteps[i + 1]]).sqrt() * eps
    torch.testing.assert_close(z0.detach(), x0, rtol=1e-4, atol=1e-5)
    z0.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in unet.named_parameters() if "lora_B" in n)


def test_checkpointed_branch_decode_gives_the_same_gradient_and_leaves_the_vae_as_it_was(tiny_bundle, dataset):
    """gradient_checkpointing also checkpoints the VAE decoder's blocks in the branch (recomputed in
    backward, not stored): same image, same LoRA gradient; the shared VAE is not left switched."""
    grads = {}
    for checkpointing in (False, True):
        trainer = make_trainer(tiny_bundle, dataset, gradient_checkpointing=checkpointing, seed=5)
        objective = trainer.objective
        z_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        recomputed = []
        hook = tiny_bundle.vae.decoder.up_blocks[0].register_forward_pre_hook(  # a forward hook would not
            lambda *_: recomputed.append(torch.is_grad_enabled()))  # fire: recompute stops early, mid-forward
        image = objective.decoded_image(z_t, 600, objective.embed(["a house"]), objective.embed([""]))
        image.square().mean().backward()
        hook.remove()
        assert len(recomputed) == (2 if checkpointing else 1)  # run again in backward when checkpointed
        assert not tiny_bundle.vae.decoder.gradient_checkpointing
        grads[checkpointing] = {n: p.grad.clone() for n, p in trainer.unet.named_parameters() if p.grad is not None}
    assert grads[False].keys() == grads[True].keys() and grads[False]
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-5, atol=1e-7)


def test_branch_timesteps_follow_the_reference():
    assert branch_timesteps(950, 20)[0] == 950 and branch_timesteps(950, 20)[-1] == 0
    assert len(branch_timesteps(950, 20)) == 20
    assert branch_timesteps(10, 20) == [10, 0]


def test_contrastive_only_training_lowers_the_gap_on_a_fixed_triplet(tiny_bundle, dataset):
    weights = LossWeights(ldm=0.0, mem=0.0, contrastive=1.0, perceptual=0.0)
    trainer = make_trainer(tiny_bundle, dataset, weights=weights, lr=5e-3, rank=8, grad_mode="first")
    item = dataset[0]
    batch = {"pixels": item["pixel_values"][None], "negatives": [item["negatives"]],
             "text": [item["text"]], "generic_text": [item["generic_text"]]}
    z0 = trainer.objective.latents(batch["pixels"])
    t = torch.tensor([600])
    z_t = tiny_bundle.scheduler.add_noise(z0, torch.randn(z0.shape, generator=torch.Generator().manual_seed(1)), t)
    cond = trainer.objective.embed(batch["text"])

    def gap() -> torch.Tensor:
        return trainer.objective.decoded_losses(batch, z_t, t, cond)["contrastive"]

    with torch.no_grad():
        start = gap().item()
    for _ in range(6):
        gap().backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    with torch.no_grad():
        end = gap().item()
    assert end < start - 1e-4, (start, end)


def test_shared_feature_distance_reads_the_decoded_image_once_for_both_losses(tiny_bundle, dataset):
    trainer = make_trainer(tiny_bundle, dataset, preset="FT+MPC")
    objective = trainer.objective
    assert objective.distance("perceptual") is objective.distance("contrastive")
    item = dataset[0]
    batch = {"pixels": item["pixel_values"][None], "negatives": [item["negatives"]],
             "text": [item["text"]], "generic_text": [item["generic_text"]]}
    objective.warm_caches()  # positives' and negatives' features, so only the decoded image is read below
    z_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    distance, read = objective.distance("perceptual"), []
    features = distance.features
    distance.features = lambda images: read.append(len(images)) or features(images)
    losses = objective.decoded_losses(batch, z_t, torch.tensor([600]), objective.embed([item["text"]]))
    assert read == [1] and set(losses) == {"perceptual", "contrastive"}
    (losses["perceptual"] + losses["contrastive"]).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainer.unet.named_parameters() if "lora_B" in n)


def test_contrastive_loss_forms():
    d_pos, d_neg = torch.tensor(0.2), torch.tensor([0.5, 0.7])
    assert torch.isclose(contrastive_loss(d_pos, d_neg), torch.tensor(-0.4))
    assert contrastive_loss(d_pos, d_neg, "hinge", margin=0.1) == 0
    assert torch.isclose(contrastive_loss(torch.tensor(0.9), d_neg, "hinge", margin=0.1), torch.tensor(0.4))
    assert contrastive_loss(d_pos, torch.empty(0)) == d_pos


def lora_tensors(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.unet.named_parameters() if is_lora(n)}


class Interrupt(Exception):
    pass


def test_resume_equals_straight_training(tiny_bundle, dataset, tmp_path):
    changes = dict(steps=4, grad_accum=2, contrastive_every=2, grad_mode="random", lr=1e-3, warmup_steps=1)
    straight = make_trainer(tiny_bundle, dataset, **changes)
    straight.train()

    first = make_trainer(tiny_bundle, dataset, tmp_path, **changes)

    def stop_at_two(step, total, logs):
        if step == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        first.train(stop_at_two)
    saved = sorted((tmp_path / "checkpoints").iterdir())
    assert [p.name for p in saved] == ["step_000002.safetensors"]

    second = make_trainer(tiny_bundle, dataset, tmp_path, **changes)
    assert second.resume() == 2
    second.train()
    expected, got = lora_tensors(straight), lora_tensors(second)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=0)
    assert [h["step"] for h in second.history] == [1, 2, 3, 4]
    assert second.history[-1]["loss"] == pytest.approx(straight.history[-1]["loss"], abs=1e-6)


def test_resume_refuses_different_settings(tiny_bundle, dataset, tmp_path):
    trainer = make_trainer(tiny_bundle, dataset, tmp_path, steps=1)
    trainer.train()
    path = trainer.save_checkpoint()
    other = make_trainer(tiny_bundle, dataset, tmp_path, steps=1, rank=8)
    with pytest.raises(ValueError, match="rank"):
        other.resume(path)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_bundle, dataset, tmp_path):
    trainer = make_trainer(tiny_bundle, dataset, tmp_path, steps=5, checkpoint_every=1, checkpoint_limit=1,
                           preset="FT")
    real = trainer.micro_step_losses

    def poisoned(batch):
        losses = real(batch)
        if trainer.step == 2:
            losses["ldm"] = losses["ldm"] * float("nan")
        return losses

    trainer.micro_step_losses = poisoned
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss/ldm = nan.*step_000002"):
        trainer.train()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000002.safetensors"]


def test_checkpoint_is_safetensors_with_everything_to_resume(tiny_bundle, dataset, tmp_path):
    trainer = make_trainer(tiny_bundle, dataset, tmp_path, steps=1)
    trainer.train()
    path = trainer.save_checkpoint()
    with safe_open(str(path), framework="pt") as handle:
        keys, meta = set(handle.keys()), handle.metadata()
    assert any(k.startswith("lora.") for k in keys) and any(k.startswith("optim.") for k in keys)
    assert {"rng.generator", "rng.torch"} <= keys
    assert meta["step"] == "1" and "lr_scheduler" in meta


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="preset 'FT\\+X'"):
        TrainConfig(preset="FT+X")
    with pytest.raises(ValueError, match="unknown training setting.*rnak"):
        TrainConfig.from_dict({"rnak": 4})
    assert dataclasses.replace(TrainConfig(), preset="FT").weight("mem") == 0.0


def test_mixed_precision_needs_cuda(tiny_bundle, dataset):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_trainer(tiny_bundle, dataset, mixed_precision="fp16")


def test_missing_backbone_weights_is_an_actionable_error(tiny_bundle, dataset):
    trainer = make_trainer(tiny_bundle, dataset, allow_random_backbone=False)
    with pytest.raises(FileNotFoundError, match="vgg16 IMAGENET1K_V1.*safetensors"):
        trainer.distance("contrastive")
