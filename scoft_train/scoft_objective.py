"""The SCoFT objective (method.md, section 1): a LoRA on the UNet attention projections,
four losses, run by the LoRA training loop (loop.py).

One micro-batch = `batch_size` CCUB examples drawn with random crop/flip as the dataset
is configured. Its losses: L_LDM and L_M on a noised latent; every `contrastive_every`
steps also the decoded-generation branch, whose decoded image feeds L_P (perceptual)
and L_C (self-contrastive against the example's negatives).

Cached besides the shared latents and captions (objective.py): the backbone features of
positives and negatives, and one feature distance per (backbone, weights).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from .config import LOSS_NAMES, TrainConfig
from .features import FeatureDistance, build_feature_distance
from .losses import contrastive_loss, diffusion_target, ldm_loss, memorization_loss
from .objective import Objective, content_key, unaugmented


class SCoFTObjective(Objective):
    method = "SCoFT"
    loss_names = LOSS_NAMES

    def __init__(self, bundle, dataset, config: TrainConfig):
        super().__init__(bundle, dataset, config)
        self._feature_cache: dict[tuple[int, bytes], list[torch.Tensor]] = {}
        self._distances: dict[tuple, FeatureDistance] = {}

    def distance(self, role: str) -> FeatureDistance:
        """The feature distance for "perceptual" or "contrastive" (shared when identical)."""
        c = self.config
        name, weights = (
            (c.perceptual_backbone, c.perceptual_weights) if role == "perceptual" else
            (c.contrastive_backbone, c.contrastive_weights)
        )
        key = (name, weights)
        if key not in self._distances:
            self._distances[key] = build_feature_distance(name, weights, c.allow_random_backbone).to(self.device)
        return self._distances[key]

    def _fixed_features(self, role: str, images: torch.Tensor) -> list[torch.Tensor]:
        """Backbone features of fixed images [K,3,H,W] (positives, negatives), cached."""
        distance = self.distance(role)
        key = (id(distance), content_key(images))
        if key not in self._feature_cache:
            with torch.no_grad():
                self._feature_cache[key] = distance.features(images.to(self.device))
        return self._feature_cache[key]

    def warm_caches(self) -> None:
        """Fill the latent, caption and feature caches for every example as loaded
        without augmentation (what center-crop, no-flip training uses)."""
        c = self.config
        for item in unaugmented(self.dataset):
            self.embed([item["text"], item["generic_text"], ""])
            pixels = item["pixel_values"][None]
            self._cache_latent(pixels[0])
            for role in ("perceptual", "contrastive"):
                if c.weight(role) > 0:
                    self._fixed_features(role, pixels)
                    if role == "contrastive" and len(item["negatives"]):
                        self._fixed_features(role, item["negatives"])

    def batch(self) -> dict:
        indices = torch.randint(len(self.dataset), (self.config.batch_size,), generator=self.generator)
        items = [self.dataset.get(int(i), self.generator) for i in indices]
        return {
            "pixels": torch.stack([it["pixel_values"] for it in items]),
            "negatives": [it["negatives"] for it in items],
            "text": [it["text"] for it in items],
            "generic_text": [it["generic_text"] for it in items],
        }

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """ldm, mem (if weighted), perceptual and contrastive (if weighted, on branch steps);
        unweighted, with graph. batch: pixels [B,3,R,R] in [-1,1], negatives, text, generic_text."""
        c, sched, loop = self.config, self.bundle.scheduler, self.loop
        with loop.timed("encode"):
            z0, noise, t, z_t = self.noised(batch["pixels"])
            cond = self.embed(batch["text"])
        losses = {}
        with loop.timed("grad_step"), loop.autocast():
            prediction = self.predict(z_t, t, cond)
            losses["ldm"] = ldm_loss(prediction, diffusion_target(sched, z0, noise, t))
        if c.weight("mem") > 0:
            with loop.timed("nograd_denoise"), torch.no_grad(), loop.autocast():
                generic = self.predict(z_t, t, self.embed(batch["generic_text"]))
            losses["mem"] = memorization_loss(prediction, generic)
        if c.needs_decoded_branch and loop.step % c.contrastive_every == 0:
            losses.update(self.decoded_losses(batch, z_t, t, cond))
        return losses

    def decoded_losses(self, batch, z_t, t, cond) -> dict[str, torch.Tensor]:
        """L_P and L_C (those weighted) of the decoded generations from z_t [B,4,h,w] at t [B]. When both
        read the same feature distance, the decoded image's features are computed (and backpropagated) once."""
        c = self.config
        distances = {role: self.distance(role) for role in ("perceptual", "contrastive") if c.weight(role) > 0}
        distinct = {id(dist): dist for dist in distances.values()}
        per_example: dict[str, list[torch.Tensor]] = defaultdict(list)
        for b, image in self.decoded_images(z_t, t, cond):
            with self.loop.timed("features"):
                anchors = {key: dist.features(image) for key, dist in distinct.items()}
                positive = batch["pixels"][b : b + 1]
                negatives = batch["negatives"][b]
                if "perceptual" in distances:
                    dist = distances["perceptual"]
                    per_example["perceptual"].append(
                        dist.distance(anchors[id(dist)], self._fixed_features("perceptual", positive))[0]
                    )
                if "contrastive" in distances:
                    dist = distances["contrastive"]
                    anchor = anchors[id(dist)]
                    d_pos = dist.distance(anchor, self._fixed_features("contrastive", positive))[0]
                    d_neg = (
                        dist.distance(anchor, self._fixed_features("contrastive", negatives))
                        if len(negatives) else None
                    )
                    per_example["contrastive"].append(contrastive_loss(d_pos, d_neg, c.contrastive_form, c.margin))
        return {name: torch.stack(values).mean() for name, values in per_example.items()}

    def lora_metadata(self) -> dict[str, str]:
        return {"scoft_preset": self.config.preset}
