"""The SFSL objective: DreamBooth with prior preservation plus the spurious feature
similarity loss (method.md, section 3), run by the LoRA training loop (../loop.py).

Modules: the UNet LoRA and, optionally, a LoRA on the CLIP text encoder's attention
projections (then every caption is embedded through it, with graph). One micro-batch:
`batch_size` instance images with the identifier prompt and, with prior preservation,
as many class images with the class prompt. Its losses:

- instance = MSE(eps_theta(z_t, t, c_instance), target) on the reference images;
- prior = the same on the class images with the class prompt (weight
  `prior_loss_weight`): keeps the class itself from drifting toward the references;
- spurious = 1 - mean cosine between the class-wise classifier features (see
  classifier.py) of the decoded generation and those of the references. The
  generation is the shared decoded-generation branch started from the noised
  instance latent at the sampled t (at large t nearly pure noise, so it is a real
  generation from the instance prompt), every `spurious_every` steps.
"""

from __future__ import annotations

import torch

from ..checkpoint import UNRECORDED
from ..lora import TEXT_ENCODER_TARGETS, add_lora
from ..losses import diffusion_target, ldm_loss
from ..objective import Objective, unaugmented, weight_sharing_copy
from .classifier import Classifier, load_classifier, reference_similarity
from .config import LOSS_NAMES, SFSLConfig


class SFSLObjective(Objective):
    """`instances`/`classes`: datasets from `data.load_image_folder` (classes may be None
    when prior_loss_weight is 0). `classifier`: the feature classifier, loaded from
    `config.classifier_weights` when not given (only needed when spurious_weight > 0)."""

    method = "SFSL"
    loss_names = LOSS_NAMES

    def __init__(self, bundle, instances, classes, config: SFSLConfig, classifier: Classifier | None = None):
        if config.prior_loss_weight > 0 and (classes is None or len(classes) == 0):
            raise ValueError("prior preservation (prior_loss_weight > 0) needs class images: make them with "
                             "`python -m scoft_train sfsl classimages`, or set prior_loss_weight 0")
        super().__init__(bundle, instances, config)
        self.classes = classes
        self._classifier = classifier
        self._reference_features: torch.Tensor | None = None

    @property
    def prior(self) -> bool:
        """Whether prior preservation trains on the class images."""
        return self.config.prior_loss_weight > 0

    def adapted_modules(self) -> dict[str, torch.nn.Module]:
        """The UNet's LoRA (seed) and, with train_text_encoder, the text encoder's (seed + 1)."""
        c, modules = self.config, super().adapted_modules()
        if c.train_text_encoder:
            text_encoder = weight_sharing_copy(self.bundle.text_encoder)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(c.seed + 1)
                add_lora(text_encoder, rank=c.rank, alpha=c.alpha, targets=TEXT_ENCODER_TARGETS)
            if c.gradient_checkpointing:
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
            pixels = torch.stack([item["pixel_values"] for item in unaugmented(self.dataset)])
            with torch.no_grad():
                self._reference_features = self.classifier.class_features(
                    pixels.to(self.device), self.config.target_class)
        return self._reference_features

    def warm_caches(self) -> None:
        """The latents of the instance (and, with prior preservation, class) images as loaded
        without augmentation, and the references' classifier features when the spurious loss is on."""
        super().warm_caches()
        for item in unaugmented(self.classes) if self.prior else ():
            self._cache_latent(item["pixel_values"])
        if self.config.spurious_weight > 0:
            self.reference_features()

    def _draw(self, data) -> torch.Tensor:
        """`batch_size` random images [B,3,R,R] of `data` (random crop/flip as configured there)."""
        indices = torch.randint(len(data), (self.config.batch_size,), generator=self.generator)
        return torch.stack([data.get(int(i), self.generator)["pixel_values"] for i in indices])

    def batch(self) -> dict:
        c = self.config
        batch = {"pixels": self._draw(self.dataset), "text": [c.instance_prompt] * c.batch_size}
        if self.prior:
            batch.update(class_pixels=self._draw(self.classes), class_text=[c.class_prompt] * c.batch_size)
        return batch

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """instance, prior (if weighted) and spurious (on branch steps) losses, unweighted, with graph.

        batch: pixels [B,3,R,R] in [-1,1] + text; class_pixels/class_text when prior is on.
        """
        c, sched, loop, n = self.config, self.bundle.scheduler, self.loop, batch["pixels"].shape[0]
        prior = "class_pixels" in batch
        with loop.timed("encode"):
            z0, noise, t, z_t = self.noised(torch.cat([batch["pixels"], batch["class_pixels"]]) if prior
                                            else batch["pixels"])
            cond = self.embed(batch["text"] + (batch["class_text"] if prior else []))
        with loop.timed("grad_step"), loop.autocast():
            prediction = self.predict(z_t, t, cond)
            target = diffusion_target(sched, z0, noise, t)
        losses = {"instance": ldm_loss(prediction[:n], target[:n])}
        if prior:
            losses["prior"] = ldm_loss(prediction[n:], target[n:])
        if c.spurious_weight > 0 and loop.step % c.spurious_every == 0:
            losses["spurious"] = self.spurious_loss(z_t[:n], t[:n], cond[:n])
        return losses

    def spurious_loss(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """1 - mean reference similarity of the decoded generations from z_t [B,4,h,w] at t [B]."""
        images = self.decoded_images(z_t, t, cond)
        references = self.reference_features()
        similarities = []
        for _, image in images:
            with self.loop.timed("features"):
                features = self.classifier.class_features(image, self.config.target_class)
                similarities.append(reference_similarity(features, references))
        return 1 - torch.cat(similarities).mean()

    def dataset_fingerprints(self) -> dict[str, str]:
        """The instance images' fingerprint and, with prior preservation, the class images'."""
        fingerprints = super().dataset_fingerprints()
        if self.prior:
            fingerprints["class_images"] = getattr(self.classes, "fingerprint", UNRECORDED)
        return fingerprints

    def lora_metadata(self) -> dict[str, str]:
        c = self.config
        return {
            "scoft_instance_prompt": c.instance_prompt,
            "scoft_class_prompt": c.class_prompt,
            "scoft_text_encoder_lora": str("text_encoder" in self.loop.trainable).lower(),
        }
