"""The SFSL trainer: DreamBooth with prior preservation plus the spurious feature
similarity loss (method.md, section 3), as a new objective on `SCoFTTrainer`'s loop.

What it changes: the trainable modules (UNet LoRA and, optionally, a LoRA on the CLIP
text encoder's attention projections), the batch (instance images with the identifier
prompt, class images with the class prompt) and the losses of one micro-batch:

- instance = MSE(eps_theta(z_t, t, c_instance), target) on the reference images;
- prior = the same on the class images with the class prompt (weight
  `prior_loss_weight`): keeps the class itself from drifting toward the references;
- spurious = 1 - mean cosine between the class-wise classifier features (see
  classifier.py) of the decoded generation and those of the references. The
  generation is the trainer's decoded-generation branch started from the noised
  instance latent at the sampled t (at large t nearly pure noise, so it is a real
  generation from the instance prompt), every `spurious_every` steps.

Accumulation, clipping, AdamW, LR schedule, the non-finite check, checkpoints (both
adapters), resume and the kohya export (`lora_unet_*` + `lora_te_*`) are inherited.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from ..lora import TEXT_ENCODER_TARGETS, add_lora, export_kohya
from ..losses import diffusion_target, ldm_loss
from ..trainer import SCoFTTrainer
from .classifier import Classifier, load_classifier, reference_similarity
from .config import LOSS_NAMES, SFSLConfig


class SFSLTrainer(SCoFTTrainer):
    """`instances`/`classes`: datasets from `data.load_image_folder` (classes may be None
    when prior_loss_weight is 0). `classifier`: the feature classifier, loaded from
    `config.classifier_weights` when not given (only needed when spurious_weight > 0)."""

    def __init__(self, bundle, instances, classes, config: SFSLConfig, output_dir: str | Path | None = None,
                 classifier: Classifier | None = None):
        if config.prior_loss_weight > 0 and (classes is None or len(classes) == 0):
            raise ValueError("prior preservation (prior_loss_weight > 0) needs class images: make them with "
                             "`python -m scoft_train sfsl classimages`, or set prior_loss_weight 0")
        self.classes = classes
        super().__init__(bundle, instances, config, output_dir)
        self.text_encoder = self.trainable.get("text_encoder")
        self._classifier = classifier
        self._reference_features: torch.Tensor | None = None

    # ----------------------------------------------------------------- set-up
    def _adapted_modules(self) -> dict[str, torch.nn.Module]:
        modules = super()._adapted_modules()
        if self.config.train_text_encoder:
            text_encoder = copy.deepcopy(self.bundle.text_encoder)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.seed + 1)
                add_lora(text_encoder, rank=self.config.rank, alpha=self.config.alpha, targets=TEXT_ENCODER_TARGETS)
            if self.config.gradient_checkpointing:
                text_encoder.gradient_checkpointing_enable()
            modules["text_encoder"] = text_encoder.train()
        return modules

    @property
    def classifier(self) -> Classifier:
        if self._classifier is None:
            c = self.config
            self._classifier = load_classifier(c.classifier, c.classifier_weights, c.classifier_size, self.device)
        if not 0 <= self.config.target_class < self._classifier.num_classes:
            raise ValueError(f"target_class {self.config.target_class} is not a class of {self._classifier.name} "
                             f"({self._classifier.num_classes} classes)")
        return self._classifier

    def reference_features(self) -> torch.Tensor:
        """Class-wise features [K,D] of every instance image (center crop, no flip), cached."""
        if self._reference_features is None:
            pixels = torch.stack([self.dataset.get(i, None)["pixel_values"] for i in range(len(self.dataset))])
            with torch.no_grad():
                self._reference_features = self.classifier.class_features(
                    pixels.to(self.device), self.config.target_class)
        return self._reference_features

    # ------------------------------------------------------------------ steps
    def _embed(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings [B,77,D]; through the trained text encoder (with graph) when it has a LoRA."""
        if self.text_encoder is None:
            return super()._embed(texts)
        tokenizer = self.bundle.tokenizer
        tokens = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt").input_ids.to(self.device)
        with self._autocast():
            return self.text_encoder(tokens)[0].to(self.unet.dtype)

    def _draw(self, data) -> torch.Tensor:
        """`batch_size` random images [B,3,R,R] of `data` (random crop/flip as configured there)."""
        indices = torch.randint(len(data), (self.config.batch_size,), generator=self.generator)
        return torch.stack([data.get(int(i), self.generator)["pixel_values"] for i in indices])

    def _batch(self) -> dict:
        c = self.config
        batch = {"pixels": self._draw(self.dataset), "text": [c.instance_prompt] * c.batch_size}
        if c.prior_loss_weight > 0:
            batch.update(class_pixels=self._draw(self.classes), class_text=[c.class_prompt] * c.batch_size)
        return batch

    def _decoded_branch_active(self) -> bool:
        return self.config.spurious_weight > 0 and self.step % self.config.spurious_every == 0

    def micro_step_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """instance, prior (if weighted) and spurious (on branch steps) losses, unweighted, with graph.

        batch: pixels [B,3,R,R] in [-1,1] + text; class_pixels/class_text when prior is on.
        """
        sched, n = self.bundle.scheduler, batch["pixels"].shape[0]
        prior = "class_pixels" in batch
        with self._timed("encode"):
            pixels = torch.cat([batch["pixels"], batch["class_pixels"]]) if prior else batch["pixels"]
            z0 = self._latents(pixels)
            noise = torch.randn(z0.shape, generator=self.generator).to(self.device)
            t = torch.randint(sched.config.num_train_timesteps, (z0.shape[0],), generator=self.generator).to(self.device)
            z_t = sched.add_noise(z0, noise, t)
            cond = self._embed(batch["text"] + (batch["class_text"] if prior else []))
        with self._timed("grad_step"), self._autocast():
            prediction = self.unet(z_t.to(self.unet.dtype), t, encoder_hidden_states=cond).sample
            target = diffusion_target(sched, z0, noise, t)
        losses = {"instance": ldm_loss(prediction[:n], target[:n])}
        if prior:
            losses["prior"] = ldm_loss(prediction[n:], target[n:])
        if self._decoded_branch_active():
            losses["spurious"] = self.spurious_loss(z_t[:n], t[:n], cond[:n])
        return losses

    def spurious_loss(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """1 - mean reference similarity of the decoded generations from z_t [B,4,h,w] at t [B]."""
        uncond = self._embed([""])
        references = self.reference_features()
        similarities = []
        for b in range(z_t.shape[0]):
            image = self._decoded_image(z_t[b : b + 1], int(t[b]), cond[b : b + 1], uncond)
            with self._timed("features"):
                features = self.classifier.class_features(image, self.config.target_class)
                similarities.append(reference_similarity(features, references))
        return 1 - torch.cat(similarities).mean()

    # ------------------------------------------------------------- persistence
    def lora_metadata(self) -> dict[str, str]:
        c = self.config
        return {
            "scoft_method": "SFSL",
            "scoft_loss_weights": json.dumps({name: c.weight(name) for name in LOSS_NAMES}, sort_keys=True),
            "scoft_instance_prompt": c.instance_prompt,
            "scoft_class_prompt": c.class_prompt,
            "scoft_text_encoder_lora": str(self.text_encoder is not None).lower(),
            "scoft_steps": str(self.step),
            "scoft_base_model": self.bundle.source,
            "scoft_base_fingerprint": self.bundle.fingerprint,
            "scoft_dataset_fingerprint": self.dataset.fingerprint,
            "scoft_config": c.to_json(),
        }

    def export_lora(self, path: str | Path) -> Path:
        """The kohya-format LoRA with the UNet and (if trained) text-encoder adapters."""
        c = self.config
        return export_kohya(self.unet, Path(path), self.lora_metadata(), rank=c.rank, alpha=c.alpha,
                            text_encoder=self.text_encoder)
