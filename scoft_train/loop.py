"""The LoRA training loop, one for every objective (SCoFT, SFSL).

It owns what stays the same whatever is learnt: the trained parameters, AdamW, the LR
schedule, gradient accumulation, mixed precision, clipping, the non-finite check, the RNG,
checkpoints and resume (run identity: settings, base model, dataset fingerprints), the
checkpoint saved when an exception interrupts training, and the kohya LoRA export. What
is learnt comes from an objective (objective.py): which modules get LoRA, one micro-batch
and its losses, cache warm-up, dataset fingerprints, LoRA metadata extras.

One optimizer step = `grad_accum` micro-batches; each micro-batch's total is the sum of
config.weight(name) * loss over the objective's losses. Objectives reach modules, device,
RNG, step and precision only through the loop, so multi-process training belongs here alone.

More than one process (distributed.py, `accelerate launch`): `batch_size` is the global
micro-batch. Every process draws it whole with the shared seeded generator, as one process
would, and keeps its slice; the objective's noise and timesteps (`randn`, `randint`) are
drawn at the global size too and sliced the same way. The logged losses and the gradients
are averaged across processes before the non-finite check and the clipping, and the
generator is kept identical on every process. Only rank 0 holds the run folder's lock and
writes checkpoints and the LoRA. With one process none of this runs: same code, same numbers.

Checkpoints (checkpoint.py): `lora.<key>` with the UNet's keys as they are and other
modules' keys prefixed "<name>.", `optim.<param index>.*` in the order of
`objective.adapted_modules()`, `rng.generator` and `rng.torch`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import torch
from diffusers.optimization import get_scheduler

from . import checkpoint as ckpt
from . import distributed, runfolder
from .atomic import DiskFullError
from .config import LoopConfig
from .lora import export_kohya, load_lora_state_dict, lora_state_dict
from .objective import Objective
from .progress import OnStep

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/inf; training stopped and the last good checkpoint was kept."""


class LoRALoop:
    """Trains `objective`'s LoRA adapters on `bundle` (never mutated); `output_dir` holds
    checkpoints (and is claimed while training) when given."""

    def __init__(self, bundle, objective: Objective, output_dir: str | Path | None = None):
        self.bundle, self.objective = bundle, objective
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.device = bundle.device
        self.processes = distributed.context()
        objective.bind(self)
        config = self.config
        if config.batch_size % self.processes.world_size:
            raise ValueError(f"batch_size {config.batch_size} (the global batch) does not split over "
                             f"{self.processes.world_size} processes: use a multiple of {self.processes.world_size}")
        self.trainable = objective.adapted_modules()
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
        self._check_precision()

    # ----------------------------------------------------------------- set-up
    @property
    def config(self) -> LoopConfig:
        """The objective's settings (a LoopConfig subclass): one object for loop and objective."""
        return self.objective.config

    @config.setter
    def config(self, config: LoopConfig) -> None:
        self.objective.config = config

    @property
    def dataset(self):
        return self.objective.dataset

    @property
    def unet(self) -> torch.nn.Module:
        return self.trainable["unet"]

    @property
    def text_encoder(self) -> torch.nn.Module | None:
        """The trained text encoder, or None where the objective trains the UNet alone."""
        return self.trainable.get("text_encoder")

    def _check_precision(self) -> None:
        if self.config.mixed_precision != "no" and self.device.type != "cuda":
            raise ValueError(
                f"mixed_precision={self.config.mixed_precision!r} needs a CUDA device; the model is on "
                f"{self.device}. Use mixed_precision='no' on CPU."
            )
        self.scaler = torch.amp.GradScaler("cuda") if self.config.mixed_precision == "fp16" else None

    def autocast(self):
        if self.config.mixed_precision == "no":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.config.mixed_precision == "fp16" else torch.bfloat16
        return torch.autocast("cuda", dtype=dtype)

    @contextlib.contextmanager
    def timed(self, name: str):
        """Adds the block's wall time to `timings[name]` while `profile` is on (on CUDA, synchronized at
        both ends, so the time is the block's own kernels)."""
        if not self.profile:
            yield
            return
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize(self.device)
        self.timings[name] += time.perf_counter() - start

    def warm_caches(self) -> None:
        self.objective.warm_caches()

    # ------------------------------------------------------------ randomness
    def randn(self, shape) -> torch.Tensor:
        """Standard normal noise of `shape` (CPU) from the loop's generator. With several processes
        it is drawn for the global batch and this process's rows are returned."""
        shape = tuple(shape)
        if not self.processes.active:
            return torch.randn(shape, generator=self.generator)
        rows = distributed.shard_rows(self.config.batch_size, shape[0], self.processes)
        drawn = torch.randn((len(rows) * self.processes.world_size, *shape[1:]), generator=self.generator)
        return drawn[rows]

    def randint(self, high: int, size) -> torch.Tensor:
        """Integers in [0, high) of `size` (CPU) from the loop's generator; sharded as `randn`."""
        size = tuple(size)
        if not self.processes.active:
            return torch.randint(high, size, generator=self.generator)
        rows = distributed.shard_rows(self.config.batch_size, size[0], self.processes)
        drawn = torch.randint(high, (len(rows) * self.processes.world_size, *size[1:]), generator=self.generator)
        return drawn[rows]

    def _next_batch(self) -> dict:
        """The objective's micro-batch; with several processes, this process's slice of it."""
        batch = self.objective.batch()
        if self.processes.active:
            batch = distributed.local_batch(batch, self.config.batch_size, self.processes)
        return batch

    def _averaged(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each loss averaged over processes (detached): what the global batch's loss is."""
        names = list(losses)
        mean = self.processes.all_reduce_mean(torch.stack([losses[n].detach().float() for n in names]))
        return dict(zip(names, mean))

    def _all_reduce_grads(self) -> None:
        """Average the trained parameters' gradients over processes (one flat buffer)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = self.processes.all_reduce_mean(torch.cat([g.reshape(-1) for g in grads]))
        offset = 0
        for param, grad in zip(self.params, grads):
            n = grad.numel()
            param.grad = flat[offset : offset + n].view_as(grad).to(grad.dtype)
            offset += n

    def _sync_generator(self) -> None:
        """Rank 0's generator state everywhere (draws made per local example, e.g. grad_mode
        random, would otherwise let the processes' data order drift apart)."""
        self.generator.set_state(self.processes.broadcast(self.generator.get_state()))

    # ------------------------------------------------------------------ steps
    def micro_step_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Every enabled loss of one micro-batch, unweighted, with graph (the objective's)."""
        return self.objective.losses(batch)

    def _check_finite(self, losses: dict[str, torch.Tensor]) -> None:
        bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v)}
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
            losses = self.micro_step_losses(self._next_batch())
            total = sum(c.weight(name) * value for name, value in losses.items())
            logged = {**losses, "total": total}
            if self.processes.active:
                logged = self._averaged(logged)
                self._sync_generator()
            self._check_finite(logged)
            with self.timed("backward"):
                scaled = total / c.grad_accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            for name, value in logged.items():
                sums[name] += float(value.detach()) / c.grad_accum
        with self.timed("optimizer"):
            if self.processes.active:
                self._all_reduce_grads()
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
        with runfolder.claim(self.output_dir) if self.processes.is_main else contextlib.nullcontext():
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
            if self.checkpoint_dir and self.step > saved_at and self.processes.is_main:
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
        return ckpt.TrainingState(
            step=self.step,
            lora=self._lora_state(),
            optimizer=self.optimizer.state_dict(),
            lr_scheduler=self.lr_scheduler.state_dict(),
            rng={"generator": self.generator.get_state(), "torch": torch.get_rng_state()},
            history=self.history,
            identity=self.run_identity(),
        )

    def run_identity(self) -> ckpt.RunIdentity:
        """This run's settings, base model and datasets, as recorded in every checkpoint."""
        return ckpt.RunIdentity(self.config.to_dict(), self.bundle.fingerprint, self.objective.dataset_fingerprints())

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        if path is None:
            if self.checkpoint_dir is None:
                raise ValueError("no output_dir: pass a checkpoint path")
            path = ckpt.checkpoint_path(self.checkpoint_dir, self.step)
        if not self.processes.is_main:
            return Path(path)  # rank 0 writes it
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
        """Every trained module's adapter in one flat dict: UNet keys as they are (the
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
        """The LoRA file's header: method, loss weights, steps, base model, data, settings,
        plus the objective's own entries."""
        c, objective = self.config, self.objective
        return {
            "scoft_method": objective.method,
            "scoft_loss_weights": json.dumps({name: c.weight(name) for name in objective.loss_names}, sort_keys=True),
            **objective.lora_metadata(),
            "scoft_steps": str(self.step),
            "scoft_base_model": self.bundle.source,
            "scoft_base_fingerprint": self.bundle.fingerprint,
            "scoft_dataset_fingerprint": getattr(objective.dataset, "fingerprint", "unknown"),
            "scoft_config": c.to_json(),
        }

    def export_lora(self, path: str | Path) -> Path:
        """The kohya-format LoRA (.safetensors, real alpha, training metadata) with the UNet's
        and, where trained, the text encoder's adapter (`lora_unet_*`, `lora_te_*`)."""
        c = self.config
        if not self.processes.is_main:
            return Path(path)  # rank 0 writes it
        return export_kohya(self.unet, Path(path), self.lora_metadata(), rank=c.rank, alpha=c.alpha,
                            text_encoder=self.text_encoder)
