"""SFSL on the tiny model: cached class images, losses and gradient routing, the two-part
kohya LoRA in diffusers and ComfyUI's key map, the spurious loss at work, resume, eval."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
import torchvision
from PIL import Image
from peft import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from scoft_train.checkpoint import OtherRunError
from scoft_train.cli import build_parser, main
from scoft_train.models import load_tiny_model
from scoft_train.sampling import sample_tensor
from scoft_train.sfsl import (SFSLConfig, SFSLTrainer, ensure_class_images, evaluate_sfsl, load_classifier,
                              load_image_folder)
from scoft_train.sfsl.classifier import reference_similarity
from scoft_train.sfsl.evaluate import load_images

CLASS_PROMPT = "a photo of dog"
SMALL = dict(class_name="dog", target_class=3, rank=4, alpha=8.0, denoise_steps=3, grad_accum=1,
             classifier="torchvision:resnet18", classifier_size=0)
# ComfyUI's comfy/lora.py LORA_CLIP_MAP (CLIP module -> kohya suffix) for SD 1.x's clip_l.
COMFY_CLIP_MAP = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
                  "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
                  "self_attn.out_proj": "self_attn_out_proj"}


def randomize_loras(*modules, seed: int = 1, std: float = 0.2) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for param in (p for p in module.parameters() if p.requires_grad):
                param.copy_(torch.randn(param.shape, generator=generator) * std)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two 64-px reference images (an orange band over a textured ground) and a random
    resnet18 (10 classes) as .safetensors."""
    root = tmp_path_factory.mktemp("sfsl")
    refs = root / "refs"
    refs.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(2):
        pixels = torch.rand(64, 64, 3, generator=generator) * 0.3
        pixels[: 20 + 4 * i] += torch.tensor([0.7, 0.35, 0.0])
        Image.fromarray((pixels.clamp(0, 1) * 255).byte().numpy()).save(refs / f"ref_{i}.png")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None, num_classes=10)
    weights = root / "resnet18_toy.safetensors"
    save_file(model.state_dict(), str(weights))
    return {"root": root, "refs": refs, "weights": weights}


@pytest.fixture(scope="module")
def classifier(files):
    return load_classifier("torchvision:resnet18", files["weights"], input_size=0)


@pytest.fixture(scope="module")
def class_dir(tiny_bundle, files):
    folder = files["root"] / "class"
    ensure_class_images(tiny_bundle, folder, CLASS_PROMPT, count=2, steps=2)
    return folder


@pytest.fixture(scope="module")
def datasets(files, class_dir):
    config = SFSLConfig(**SMALL)
    return (load_image_folder(files["refs"], config.instance_prompt, resolution=64),
            load_image_folder(class_dir, config.class_prompt, resolution=64))


@pytest.fixture(scope="module")
def trained(tiny_bundle, datasets, classifier):
    """A UNet + text-encoder SFSL trainer whose LoRAs hold random non-zero weights. Do not mutate."""
    trainer = SFSLTrainer(tiny_bundle, *datasets, SFSLConfig(**SMALL), classifier=classifier)
    randomize_loras(trainer.unet, trainer.text_encoder)
    return trainer


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    return trained.export_lora(tmp_path_factory.mktemp("lora") / "sfsl.safetensors")


def test_class_images_are_generated_once_and_resumed(tiny_bundle, tmp_path):
    folder, calls = tmp_path / "class", []
    record = lambda step, total, logs: calls.append(logs["index"])  # noqa: E731
    paths = ensure_class_images(tiny_bundle, folder, CLASS_PROMPT, count=3, steps=2, on_step=record)
    assert calls == [0, 1, 2] and [p.name for p in paths] == [f"class_0000{i}.png" for i in range(3)]
    stamps = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    calls.clear()
    assert ensure_class_images(tiny_bundle, folder, CLASS_PROMPT, count=3, steps=2, on_step=record) == paths
    assert calls == [] and {p: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    original = paths[1].read_bytes()
    paths[1].unlink()
    ensure_class_images(tiny_bundle, folder, CLASS_PROMPT, count=3, steps=2, on_step=record)
    assert calls == [1] and paths[1].read_bytes() == original
    assert all(p.stat().st_mtime_ns == stamps[p] for p in (paths[0], paths[2]))
    with pytest.raises(ValueError, match="prompt: 'a photo of dog' there vs 'a photo of cat' now"):
        ensure_class_images(tiny_bundle, folder, "a photo of cat", count=3, steps=2)


def test_losses_are_finite_and_gradients_reach_only_the_two_loras(tiny_bundle, trained, classifier):
    losses = trained.micro_step_losses(trained.objective.batch())
    assert set(losses) == {"instance", "prior", "spurious"}
    assert all(value.shape == () and torch.isfinite(value) for value in losses.values())
    assert 0 <= losses["spurious"] <= 2
    for name, loss in losses.items():
        for part, module in (("unet", trained.unet), ("text_encoder", trained.text_encoder)):
            named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
            grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True, allow_unused=True)
            moved = [n for (n, _), g in zip(named, grads, strict=True) if g is not None and g.abs().sum() > 0]
            assert moved, f"L_{name} moved nothing in the {part} LoRA"
    trainable = [n for m in (trained.unet, trained.text_encoder) for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trained.params) == len(trainable)
    sum(losses.values()).backward()
    frozen = [p for m in (trained.unet, trained.text_encoder) for p in m.parameters() if not p.requires_grad]
    frozen += [p for m in (tiny_bundle.unet, tiny_bundle.vae, tiny_bundle.text_encoder, classifier) for p in m.parameters()]
    assert all(p.grad is None for p in frozen)
    trained.optimizer.zero_grad(set_to_none=True)


def test_exported_file_applies_both_loras_in_diffusers(tiny_bundle, trained, exported, caplog):
    prompts, args = [trained.config.instance_prompt, "a photo of a street"], dict(seeds=3, steps=3, cfg=5.0)
    pipe = load_tiny_model().pipeline()
    with caplog.at_level(logging.WARNING, logger="diffusers"):
        pipe.load_lora_weights(str(exported), adapter_name="loaded")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    for ours, theirs in ((trained.unet, pipe.unet), (trained.text_encoder, pipe.text_encoder)):
        mine, loaded = get_peft_model_state_dict(ours, adapter_name="scoft"), get_peft_model_state_dict(theirs, adapter_name="loaded")
        assert mine.keys() == loaded.keys() and all(torch.equal(mine[k], loaded[k]) for k in mine)
    in_memory = sample_tensor(dataclasses.replace(tiny_bundle, text_encoder=trained.text_encoder), prompts,
                              unet=trained.unet, **args)
    from_file = sample_tensor(load_tiny_model(), prompts, lora_path=exported, **args)
    unet_only = sample_tensor(tiny_bundle, prompts, unet=trained.unet, **args)
    assert torch.allclose(from_file, in_memory, atol=1e-5)
    assert (from_file - unet_only).abs().max() > 0.01  # the text-encoder LoRA is applied too


def test_sampling_with_a_text_encoder_lora_leaves_the_bundle_alone(tiny_bundle, trained, exported):
    """The LoRA goes into copies of both modules it adapts: the bundle's text encoder keeps
    its weights and gets no adapter, so a second LoRA run and a baseline run behave."""
    prompts, args = [trained.config.instance_prompt], dict(seeds=3, steps=2, cfg=5.0)
    before = {k: v.clone() for k, v in tiny_bundle.text_encoder.state_dict().items()}
    baseline = sample_tensor(tiny_bundle, prompts, **args)
    first = sample_tensor(tiny_bundle, prompts, lora_path=exported, **args)
    again = sample_tensor(tiny_bundle, prompts, lora_path=exported, **args)
    assert torch.equal(first, again) and (first - baseline).abs().max() > 0.01
    after = tiny_bundle.text_encoder.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not any("lora" in name for name, _ in tiny_bundle.text_encoder.named_modules())
    assert torch.equal(sample_tensor(tiny_bundle, prompts, **args), baseline)


def test_kohya_names_map_fully_onto_comfyui_key_map(tiny_bundle, exported):
    """ComfyUI's model_lora_keys_unet names `lora_unet_<diffusers key>` and model_lora_keys_clip
    `lora_te_text_model_encoder_layers_<b>_<LORA_CLIP_MAP suffix>` for SD 1.x."""
    unet_names = {"lora_unet_" + k[: -len(".weight")].replace(".", "_")
                  for k in tiny_bundle.unet.state_dict() if k.endswith(".weight")}
    layers = tiny_bundle.text_encoder.config.num_hidden_layers
    clip_names = {f"lora_te_text_model_encoder_layers_{b}_{suffix}" for b in range(layers) for suffix in COMFY_CLIP_MAP.values()}
    tensors = load_file(str(exported))
    stems = {key.split(".")[0] for key in tensors}
    assert len(tensors) == 3 * len(stems)
    assert all({f"{s}.lora_down.weight", f"{s}.lora_up.weight", f"{s}.alpha"} <= tensors.keys() for s in stems)
    te_stems = {s for s in stems if s.startswith("lora_te_")}
    assert te_stems == {n for n in clip_names if "self_attn" in n}  # q, k, v, out of every layer
    assert stems - te_stems <= unet_names and len(stems - te_stems) == 32
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in stems


def test_spurious_loss_lowers_the_feature_distance_on_a_toy_case(tiny_bundle, datasets, classifier):
    config = SFSLConfig(**{**SMALL, "rank": 8, "prior_loss_weight": 0.0, "spurious_weight": 1.0, "lr": 5e-3})
    trainer = SFSLTrainer(tiny_bundle, datasets[0], None, config, classifier=classifier)
    z0 = trainer.objective.latents(datasets[0][0]["pixel_values"][None])
    t = torch.tensor([700])
    z_t = tiny_bundle.scheduler.add_noise(z0, torch.randn(z0.shape, generator=torch.Generator().manual_seed(1)), t)

    def distance() -> torch.Tensor:
        return trainer.objective.spurious_loss(z_t, t, trainer.objective.embed([config.instance_prompt]))

    with torch.no_grad():
        start = distance().item()
    for _ in range(5):
        distance().backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    with torch.no_grad():
        end = distance().item()
    assert end < start * 0.9, (start, end)


def test_checkpoint_resume_restores_both_loras(tiny_bundle, datasets, classifier, tmp_path):
    config = SFSLConfig(**{**SMALL, "steps": 1, "spurious_weight": 0.0, "lr": 1e-2})
    first = SFSLTrainer(tiny_bundle, *datasets, config, tmp_path, classifier=classifier)
    first.train()
    path = first.save_checkpoint()
    second = SFSLTrainer(tiny_bundle, *datasets, config, tmp_path, classifier=classifier)
    assert second.resume(path) == 1
    expected, got = first._lora_state(), second._lora_state()
    assert any(k.startswith("text_encoder.") for k in expected) and expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert any(v.abs().sum() > 0 for k, v in got.items() if k.startswith("text_encoder.") and "lora_B" in k)


def test_class_images_are_part_of_the_run_identity(tiny_bundle, datasets, files, classifier, tmp_path):
    instances, classes = datasets
    config = SFSLConfig(**{**SMALL, "steps": 1, "spurious_weight": 0.0, "train_text_encoder": False})
    first = SFSLTrainer(tiny_bundle, instances, classes, config, tmp_path, classifier=classifier)
    assert first.run_identity().datasets == {"dataset": instances.fingerprint, "class_images": classes.fingerprint}
    first.train()
    path = first.save_checkpoint()
    other_classes = load_image_folder(files["refs"], config.class_prompt, resolution=64)
    assert other_classes.fingerprint != classes.fingerprint
    second = SFSLTrainer(tiny_bundle, instances, other_classes, config, tmp_path, classifier=classifier)
    with pytest.raises(OtherRunError, match=r"class_images fingerprint: \w+ now, \w+ in the checkpoint"):
        second.resume(path)
    # Without prior preservation the class images are not trained on, and not recorded.
    unused = SFSLTrainer(tiny_bundle, instances, classes, dataclasses.replace(config, prior_loss_weight=0.0))
    assert unused.run_identity().datasets == {"dataset": instances.fingerprint}


def test_set_up_errors_name_the_fix(tiny_bundle, datasets, files):
    with pytest.raises(ValueError, match="needs class images"):
        SFSLTrainer(tiny_bundle, datasets[0], None, SFSLConfig(**SMALL))
    with pytest.raises(ValueError, match="target_class"):
        SFSLConfig(spurious_weight=0.5)
    missing = files["root"] / "robust_r50.safetensors"
    with pytest.raises(FileNotFoundError, match="robust_r50.safetensors.*state dict"):
        load_classifier("torchvision:resnet50", missing)


def test_eval_reports_rate_similarity_and_skips_quality(files, classifier, tmp_path, capsys):
    references = load_images(files["refs"])
    noise = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    predicted = [int(classifier.predict(image[None] * 2 - 1)) for image in references + noise]
    target = predicted[0]
    report = evaluate_sfsl(references + noise, references, [classifier], target)
    assert report.images == 5
    assert report.spurious_rate[classifier.name] == pytest.approx(predicted.count(target) / 5)
    own = reference_similarity(torch.cat([classifier.class_features(r[None] * 2 - 1, target) for r in references]),
                               torch.cat([classifier.class_features(r[None] * 2 - 1, target) for r in references]))
    assert report.similarity <= float(own.mean()) + 1e-6 and -1 <= report.similarity <= 1
    assert report.quality is None and "quality skipped" in report.notes[0]
    out = tmp_path / "report.json"
    code = main(["sfsl", "eval", "--images", str(files["refs"]), "--references", str(files["refs"]),
                 "--classifier", f"torchvision:resnet18={files['weights']}", "--classifier-size", "0",
                 "--target-class", str(target), "--out", str(out)])
    assert code == 0 and out.is_file() and "spurious rate" in capsys.readouterr().out


@pytest.mark.parametrize("step,expected", [("classimages", "--count"), ("train", "--spurious-weight"),
                                           ("eval", "--quality-weights")])
def test_every_sfsl_step_has_help(step, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["sfsl", step, "--help"])
    assert exit_info.value.code == 0 and expected in capsys.readouterr().out


def test_sfsl_trains_exports_and_samples_through_peft_alone(tiny_bundle, datasets, classifier, tmp_path,
                                                            monkeypatch):
    """The adapter glue of transformers and diffusers pins its own peft range (transformers
    5.24 refused peft 0.21 there): with every entry point of that glue made to fail, SFSL still
    trains both LoRAs, exports them, and samples with the file (UNet and text encoder)."""
    import diffusers.loaders.lora_pipeline
    import diffusers.loaders.peft
    import transformers.integrations.peft

    def glue(*args, **kwargs):
        raise AssertionError("transformers'/diffusers' adapter glue was called")

    for owner, names in ((transformers.integrations.peft.PeftAdapterMixin, ("add_adapter", "load_adapter")),
                         (diffusers.loaders.peft.PeftAdapterMixin, ("add_adapter", "load_lora_adapter")),
                         (diffusers.loaders.lora_pipeline.StableDiffusionLoraLoaderMixin, ("load_lora_weights",))):
        for name in names:
            monkeypatch.setattr(owner, name, glue)
    trainer = SFSLTrainer(tiny_bundle, *datasets, SFSLConfig(**{**SMALL, "steps": 2, "spurious_every": 1}),
                          classifier=classifier)
    trainer.train()
    assert trainer.step == 2 and trainer.text_encoder is not None
    lora = trainer.export_lora(tmp_path / "sfsl.safetensors")
    keys = load_file(str(lora)).keys()
    assert any(k.startswith("lora_te_") for k in keys) and any(k.startswith("lora_unet_") for k in keys)
    prompts, args = [trainer.config.instance_prompt], dict(seeds=3, steps=2, cfg=5.0)
    in_memory = sample_tensor(dataclasses.replace(tiny_bundle, text_encoder=trainer.text_encoder), prompts,
                              unet=trainer.unet, **args)
    assert torch.allclose(sample_tensor(tiny_bundle, prompts, lora_path=lora, **args), in_memory, atol=1e-5)
