"""The SCoFT trainer: a LoRA on the UNet attention projections, four losses.

One optimizer step = `grad_accum` micro-batches of `batch_size` CCUB examples. Per
micro-batch (method.md, section 1): L_LDM and L_M on a noised latent; every
`contrastive_every` steps also the decoded-generation branch (generation.py), whose
decoded image feeds L_P (perceptual) and L_C (self-contrastive against the negatives).

Expensive invariants are cached: VAE latent distributions of the CCUB images, text
embeddings of every caption, backbone features of positives and negatives.
The bundle given is never mutated: the trainer adapts a private copy of the UNet.

Other objectives reuse the loop (accumulation, clipping, schedule, checkpoints, resume)
by overriding `_adapted_modules`, `_batch` and `micro_step_losses` (see sfsl.trainer).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import torch
from diffusers.optimization import get_scheduler

from . import checkpoint as ckpt
from . import runfolder
from .atomic import DiskFullError
from .config import LOSS_NAMES, TrainConfig
from .features import FeatureDistance, build_feature_distance
from .generation import denoise_to_latent
from .lora import add_lora, export_kohya, load_lora_state_dict, lora_state_dict
from .losses import contrastive_loss, diffusion_target, ldm_loss, memorization_loss
from .progress import OnStep

log = logging.getLogger(__name__)



class NonFiniteLossError(RuntimeError):
    """A loss became NaN/inf; training stopped and the last good checkpoint was kept."""


class SCoFTTrainer:
    def __init__(self, bundle, dataset, config: TrainConfig, output_dir: str | Path | None = None):
        self.bundle, self.dataset, self.config = bundle, dataset, config
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.device = bundle.device
        self.trainable = self._adapted_modules()
        self.unet = self.trainable["unet"]
        self.params = [p for module in self.trainable.values() for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr)
        self.lr_scheduler = get_scheduler(
            "constant_with_warmup" if config.lr_schedule == "constant" else config.lr_schedule,
            self.optimizer,
            num_warmup_steps=config.warmup_steps,
            num_training_steps=config.steps,
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.resumed_from: Path | None = None
        self.history: list[dict] = []
        self.timings: dict[str, float] = defaultdict(float)
        self.profile = False
        self._latent_cache: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        self._text_cache: dict[str, torch.Tensor] = {}
        self._feature_cache: dict[tuple[int, bytes], list[torch.Tensor]] = {}
        self._distances: dict[tuple, FeatureDistance] = {}
        self._check_precision()

    # ----------------------------------------------------------------- set-up
    def _adapted_modules(self) -> dict[str, torch.nn.Module]:
        """Private copies of the modules to train, each carrying our LoRA: {"unet": ...}.

        Subclasses may add more (e.g. "text_encoder"); optimizer, checkpoints and resume
        cover every entry.
        """
        unet = copy.deepcopy(self.bundle.unet)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            add_lora(unet, rank=self.config.rank, alpha=self.config.alpha)
        if self.config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        return {"unet": unet}

    def _check_precision(self) -> None:
        if self.config.mixed_precision != "no" and self.device.type != "cuda":
            raise ValueError(
                f"mixed_precision={self.config.mixed_precision!r} needs a CUDA device; the model is on "
                f"{self.device}. Use mixed_precision='no' on CPU."
            )
        self.scaler = torch.amp.GradScaler("cuda") if self.config.mixed_precision == "fp16" else None

    def _autocast(self):
        if self.config.mixed_precision == "no":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.config.mixed_precision == "fp16" else torch.bfloat16
        return torch.autocast("cuda", dtype=dtype)

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

    @contextlib.contextmanager
    def _timed(self, name: str):
        if not self.profile:
            yield
            return
        start = time.perf_counter()
        yield
        self.timings[name] += time.perf_counter() - start

    # ----------------------------------------------------------------- caches
    @staticmethod
    def _content_key(images: torch.Tensor) -> bytes:
        return hashlib.blake2b(images.detach().cpu().numpy().tobytes(), digest_size=16).digest()

    def _latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents [B,4,h,w] of images [B,3,H,W] in [-1,1], sampled with our RNG."""
        cached = [self._cache_latent(image) for image in pixels]
        mean, std = torch.cat([m for m, _ in cached]), torch.cat([s for _, s in cached])
        noise = torch.randn(mean.shape, generator=self.generator).to(self.device)
        config = self.bundle.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        return (mean + std * noise - shift) * config.scaling_factor

    def _cache_latent(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std [1,4,h,w] of the VAE posterior of one image [3,H,W], cached."""
        key = self._content_key(image)
        if key not in self._latent_cache:
            vae = self.bundle.vae
            with torch.no_grad():
                dist = vae.encode(image[None].to(self.device, vae.dtype)).latent_dist
            self._latent_cache[key] = (dist.mean.float(), dist.std.float())
        return self._latent_cache[key]

    def _embed(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings [B,77,D], cached per caption. Each caption is encoded alone, so
        an embedding never depends on which captions happened to share its batch."""
        tokenizer = self.bundle.tokenizer
        for text in texts:
            if text not in self._text_cache:
                tokens = tokenizer(
                    [text], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt",
                ).input_ids.to(self.device)
                with torch.no_grad():
                    self._text_cache[text] = self.bundle.text_encoder(tokens)[0][0]
        return torch.stack([self._text_cache[t] for t in texts]).to(self.unet.dtype)

    def _fixed_features(self, role: str, images: torch.Tensor) -> list[torch.Tensor]:
        """Backbone features of fixed images [K,3,H,W] (positives, negatives), cached."""
        distance = self.distance(role)
        key = (id(distance), self._content_key(images))
        if key not in self._feature_cache:
            with torch.no_grad():
                self._feature_cache[key] = distance.features(images.to(self.device))
        return self._feature_cache[key]

    def warm_caches(self) -> None:
        """Fill the latent, caption and feature caches for every example as loaded
        without augmentation (what center-crop, no-flip training uses)."""
        c = self.config
        for index in range(len(self.dataset)):
            item = self.dataset.get(index, None)
            self._embed([item["text"], item["generic_text"], ""])
            pixels = item["pixel_values"][None]
            self._cache_latent(pixels[0])
            for role in ("perceptual", "contrastive"):
                if c.weight(role) > 0:
                    self._fixed_features(role, pixels)
                    if role == "contrastive" and len(item["negatives"]):
                        self._fixed_features(role, item["negatives"])

    # ------------------------------------------------------------------ steps
    def _batch(self) -> dict:
        indices = torch.randint(len(self.dataset), (self.config.batch_size,), generator=self.generator)
        items = [self.dataset.get(int(i), self.generator) for i in indices]
        return {
            "pixels": torch.stack([it["pixel_values"] for it in items]),
            "negatives": [it["negatives"] for it in items],
            "text": [it["text"] for it in items],
            "generic_text": [it["generic_text"] for it in items],
        }

    def _decoded_branch_active(self) -> bool:
        return self.config.needs_decoded_branch and self.step % self.config.contrastive_every == 0

    def micro_step_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Every enabled loss of one micro-batch, unweighted, with graph."""
        c, sched = self.config, self.bundle.scheduler
        with self._timed("encode"):
            z0 = self._latents(batch["pixels"])
            noise = torch.randn(z0.shape, generator=self.generator).to(self.device)
            t = torch.randint(sched.config.num_train_timesteps, (z0.shape[0],), generator=self.generator).to(self.device)
            z_t = sched.add_noise(z0, noise, t)
            cond = self._embed(batch["text"])
        losses = {}
        with self._timed("grad_step"), self._autocast():
            prediction = self.unet(z_t.to(self.unet.dtype), t, encoder_hidden_states=cond).sample
            losses["ldm"] = ldm_loss(prediction, diffusion_target(sched, z0, noise, t))
        if c.weight("mem") > 0:
            with self._timed("nograd_denoise"), torch.no_grad(), self._autocast():
                generic = self.unet(z_t.to(self.unet.dtype), t, encoder_hidden_states=self._embed(batch["generic_text"])).sample
            losses["mem"] = memorization_loss(prediction, generic)
        if self._decoded_branch_active():
            losses.update(self._decoded_losses(batch, z_t, t, cond))
        return losses

    def _decoded_image(self, z_t: torch.Tensor, t: int, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """The decoded generation x0_hat [1,3,H,W] (about [-1,1]) from z_t [1,4,h,w] at timestep t,
        cond/uncond [1,77,D]; its graph reaches the LoRA through one UNet call (generation.py)."""
        c, vae = self.config, self.bundle.vae
        with self._timed("denoise_branch"), self._autocast():
            z_hat = denoise_to_latent(
                self.unet, self.bundle.scheduler, z_t.float(), t, cond, uncond,
                steps=c.denoise_steps, cfg=c.cfg, grad_mode=c.grad_mode, generator=self.generator,
            )
        with self._timed("decode"), self._autocast():
            shift = getattr(vae.config, "shift_factor", None) or 0.0
            return vae.decode((z_hat / vae.config.scaling_factor + shift).to(vae.dtype)).sample.float()

    def _decoded_losses(self, batch, z_t, t, cond) -> dict[str, torch.Tensor]:
        c = self.config
        uncond = self._embed([""])
        per_example: dict[str, list[torch.Tensor]] = defaultdict(list)
        for b in range(z_t.shape[0]):
            image = self._decoded_image(z_t[b : b + 1], int(t[b]), cond[b : b + 1], uncond)
            with self._timed("features"):
                positive = batch["pixels"][b : b + 1]
                negatives = batch["negatives"][b]
                if c.weight("perceptual") > 0:
                    dist = self.distance("perceptual")
                    per_example["perceptual"].append(
                        dist.distance(dist.features(image), self._fixed_features("perceptual", positive))[0]
                    )
                if c.weight("contrastive") > 0:
                    dist = self.distance("contrastive")
                    anchor = dist.features(image)
                    d_pos = dist.distance(anchor, self._fixed_features("contrastive", positive))[0]
                    d_neg = (
                        dist.distance(anchor, self._fixed_features("contrastive", negatives))
                        if len(negatives) else None
                    )
                    per_example["contrastive"].append(contrastive_loss(d_pos, d_neg, c.contrastive_form, c.margin))
        return {name: torch.stack(values).mean() for name, values in per_example.items()}

    def _check_finite(self, losses: dict[str, torch.Tensor]) -> None:
        bad = {k: float(v) for k, v in losses.items() if not torch.isfinite(v)}
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            kept = ckpt.list_checkpoints(self.checkpoint_dir) if self.checkpoint_dir else []
            where = f"last good checkpoint kept: {kept[-1]}" if kept else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step + 1}: "
                + ", ".join(f"loss/{k} = {v}" for k, v in bad.items())
                + f"; training stopped ({where}). Lower the learning rate or use mixed_precision='no'."
            )

    def train_step(self) -> dict[str, float]:
        """One optimizer step (grad_accum micro-batches); returns the logged values."""
        c = self.config
        sums: dict[str, float] = defaultdict(float)
        for _ in range(c.grad_accum):
            losses = self.micro_step_losses(self._batch())
            total = sum(c.weight(name) * value for name, value in losses.items())
            self._check_finite({**losses, "total": total})
            with self._timed("backward"):
                scaled = total / c.grad_accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            for name, value in losses.items():
                sums[name] += float(value.detach()) / c.grad_accum
            sums["total"] += float(total.detach()) / c.grad_accum
        with self._timed("optimizer"):
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, c.max_grad_norm)
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        logs = {"step": self.step, "loss": sums.pop("total"), "lr": self.lr_scheduler.get_last_lr()[0]}
        logs.update({f"loss/{name}": value for name, value in sums.items()})
        return logs

    # ------------------------------------------------------------------- loop
    @property
    def checkpoint_dir(self) -> Path | None:
        return self.output_dir / "checkpoints" if self.output_dir is not None else None

    def train(self, on_step: OnStep | None = None) -> list[dict]:
        """Run until `config.steps`; on_step(step, total, logs) after every step.

        An exception raised by on_step (e.g. a host's interrupt) or by the step itself
        saves a checkpoint of the last completed step before propagating, so training
        resumes exactly from there. A non-finite loss or a full disk saves nothing new.
        With an output folder, the run holds its lock throughout and a fresh start is
        refused where checkpoints already are (runfolder.py).
        """
        if self.output_dir is None:
            return self._train_loop(on_step)
        with runfolder.claim(self.output_dir):
            if self.step == 0 and self.resumed_from is None:
                runfolder.refuse_fresh_start(self.checkpoint_dir, self.run_identity())
            return self._train_loop(on_step)

    def _train_loop(self, on_step: OnStep | None) -> list[dict]:
        c = self.config
        saved_at = self.step
        try:
            while self.step < c.steps:
                logs = self.train_step()
                self.history.append(logs)
                if self.checkpoint_dir and c.checkpoint_every and self.step % c.checkpoint_every == 0:
                    self.save_checkpoint()
                    saved_at = self.step
                if on_step is not None:
                    on_step(self.step, c.steps, logs)
        except (NonFiniteLossError, DiskFullError):
            raise
        except BaseException:
            if self.checkpoint_dir and self.step > saved_at:
                self._save_on_interrupt()
            raise
        return self.history

    def _save_on_interrupt(self) -> None:
        """Checkpoint the last completed step while an exception propagates; a failed save
        is logged, so the original exception stays the one raised."""
        try:
            path = self.save_checkpoint()
        except OSError as error:
            log.error("training interrupted at step %d; its checkpoint was not saved: %s", self.step, error)
        else:
            log.warning("training interrupted at step %d; checkpoint saved to %s", self.step, path)

    # ------------------------------------------------------------- persistence
    def training_state(self) -> ckpt.TrainingState:
        optimizer = self.optimizer.state_dict()
        return ckpt.TrainingState(
            step=self.step,
            lora=self._lora_state(),
            optimizer=optimizer,
            lr_scheduler=self.lr_scheduler.state_dict(),
            rng={"generator": self.generator.get_state(), "torch": torch.get_rng_state()},
            history=self.history,
            identity=self.run_identity(),
        )

    def run_identity(self) -> ckpt.RunIdentity:
        """This run's settings, base model and datasets, as recorded in every checkpoint."""
        return ckpt.RunIdentity(self.config.to_dict(), self.bundle.fingerprint, self._dataset_fingerprints())

    def _dataset_fingerprints(self) -> dict[str, str]:
        """{name: fingerprint} of the data trained on; subclasses add their other datasets."""
        return {"dataset": getattr(self.dataset, "fingerprint", ckpt.UNRECORDED)}

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        if path is None:
            if self.checkpoint_dir is None:
                raise ValueError("no output_dir: pass a checkpoint path")
            path = ckpt.checkpoint_path(self.checkpoint_dir, self.step)
        ckpt.save_checkpoint(Path(path), self.training_state())
        if self.checkpoint_dir is not None and Path(path).parent == self.checkpoint_dir:
            ckpt.rotate_checkpoints(self.checkpoint_dir, self.config.checkpoint_limit, self.run_identity())
        log.info("checkpoint at step %d: %s", self.step, path)
        return Path(path)

    def resume(self, path: str | Path | None = None) -> int:
        """Restore LoRA, optimizer, schedule, RNG and history; `path` None = the newest intact
        checkpoint in output_dir. Refused, naming what differs, unless the checkpoint records
        this run's identity (settings but steps and checkpoint cadence, base model, datasets)."""
        if path is None:
            if self.checkpoint_dir is None:
                raise ValueError("no output_dir: pass a checkpoint path to resume from")
            path, state = ckpt.latest_checkpoint(self.checkpoint_dir, self.run_identity())
        else:
            state = ckpt.load_checkpoint(path)
            ckpt.check_same_run(Path(path), state.identity, self.run_identity())
        self._load_lora_state(state.lora)
        self.optimizer.load_state_dict(state.optimizer)
        self.lr_scheduler.load_state_dict(state.lr_scheduler)
        self.generator.set_state(state.rng["generator"])
        torch.set_rng_state(state.rng["torch"])
        self.step, self.history, self.resumed_from = state.step, state.history, Path(path)
        log.info("resumed from %s at step %d", path, self.step)
        return self.step

    def _lora_state(self) -> dict[str, torch.Tensor]:
        """Every trainable module's adapter in one flat dict: UNet keys as they are (the
        original checkpoint layout), other modules' keys prefixed by "<name>."."""
        state = {}
        for name, module in self.trainable.items():
            prefix = "" if name == "unet" else f"{name}."
            state.update({prefix + key: value for key, value in lora_state_dict(module).items()})
        return state

    def _load_lora_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of `_lora_state`; each module's part must match its adapter exactly."""
        rest = dict(state)
        for name, module in self.trainable.items():
            if name != "unet":
                prefix = f"{name}."
                part = {key[len(prefix) :]: rest.pop(key) for key in list(rest) if key.startswith(prefix)}
                load_lora_state_dict(module, part)
        load_lora_state_dict(self.unet, rest)

    def lora_metadata(self) -> dict[str, str]:
        c = self.config
        return {
            "scoft_method": "SCoFT",
            "scoft_preset": c.preset,
            "scoft_loss_weights": json.dumps({name: c.weight(name) for name in LOSS_NAMES}, sort_keys=True),
            "scoft_steps": str(self.step),
            "scoft_base_model": self.bundle.source,
            "scoft_base_fingerprint": self.bundle.fingerprint,
            "scoft_dataset_fingerprint": getattr(self.dataset, "fingerprint", "unknown"),
            "scoft_config": self.config.to_json(),
        }

    def export_lora(self, path: str | Path) -> Path:
        """The kohya-format LoRA (.safetensors, real alpha, training metadata)."""
        return export_kohya(self.unet, Path(path), self.lora_metadata(), rank=self.config.rank, alpha=self.config.alpha)
