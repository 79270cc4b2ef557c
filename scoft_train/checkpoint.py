"""Training checkpoints as one .safetensors file: LoRA, optimizer, RNG, schedule, step, run identity.

Tensors: `lora.<peft key>`, `optim.<param index>.<state key>`, `rng.<name>` (uint8
RNG states). Header metadata (strings): step, config, the base-model and dataset
fingerprints, optimizer param groups, LR scheduler state and loss history as JSON.
No pickle anywhere, so resuming from a checkpoint someone sent you cannot run code.

A checkpoint records its run's identity (`RunIdentity`): the settings that shape the
result, the base model's and the datasets' fingerprints. Resume and rotation only ever
act on checkpoints of the same identity; a damaged checkpoint is named and skipped.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic import atomic_save_safetensors
from .weightfile import DamagedFileError, read_safetensors, read_safetensors_header

log = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{6,})\.safetensors$")
FORMAT = "scoft-checkpoint-1"
# Settings a resumed run may change: they say how long to train and how often to save,
# not what is learnt.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "checkpoint_limit")
UNRECORDED = "not recorded"
_FIX = "delete it; resume from an older checkpoint, or train afresh"


@dataclass(frozen=True)
class RunIdentity:
    """What makes checkpoints one run: `config` (a TrainConfig-like `to_dict()`; all but
    RESUMABLE_CHANGES must match), the base model's fingerprint, {name: fingerprint} of
    the datasets trained on."""

    config: dict
    base_model: str
    datasets: dict[str, str] = field(default_factory=dict)

    def differences(self, recorded: RunIdentity) -> list[str]:
        """What differs between this run and a `recorded` one, one phrase each (empty when none)."""
        found = []
        names = sorted((self.config.keys() | recorded.config.keys()) - set(RESUMABLE_CHANGES))
        for name in names:
            ours, theirs = _jsonable(self.config.get(name)), _jsonable(recorded.config.get(name))
            if ours != theirs:
                found.append(f"{name}: {_short(ours)} now, {_short(theirs)} in the checkpoint")
        if self.base_model != recorded.base_model:
            found.append(f"base model fingerprint: {self.base_model} now, {recorded.base_model} in the checkpoint")
        for name in sorted(self.datasets.keys() | recorded.datasets.keys()):
            ours, theirs = self.datasets.get(name, UNRECORDED), recorded.datasets.get(name, UNRECORDED)
            if ours != theirs:
                found.append(f"{name} fingerprint: {ours} now, {theirs} in the checkpoint")
        return found

    def to_metadata(self) -> dict[str, str]:
        return {
            "config": json.dumps(self.config, sort_keys=True),
            "base_fingerprint": self.base_model,
            "dataset_fingerprints": json.dumps(self.datasets, sort_keys=True),
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> RunIdentity:
        """The identity a checkpoint header records (older checkpoints lack the fingerprints)."""
        return cls(
            config=json.loads(metadata["config"]),
            base_model=metadata.get("base_fingerprint", UNRECORDED),
            datasets=json.loads(metadata.get("dataset_fingerprints", "{}")),
        )


@dataclass
class TrainingState:
    step: int
    lora: dict[str, torch.Tensor]
    optimizer: dict
    lr_scheduler: dict
    rng: dict[str, torch.Tensor]
    history: list[dict]
    identity: RunIdentity


def save_checkpoint(path: Path, state: TrainingState) -> Path:
    tensors = {f"lora.{k}": v for k, v in state.lora.items()}
    for index, values in state.optimizer["state"].items():
        for key, value in values.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
    tensors.update({f"rng.{k}": v for k, v in state.rng.items()})
    metadata = {
        "format": FORMAT,
        "step": str(state.step),
        **state.identity.to_metadata(),
        "param_groups": json.dumps(state.optimizer["param_groups"]),
        "lr_scheduler": json.dumps(state.lr_scheduler),
        "history": json.dumps(state.history),
    }
    atomic_save_safetensors(tensors, path, metadata)
    return path


def _check_format(path: Path, metadata: dict[str, str]) -> None:
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a SCoFT training checkpoint (header format={metadata.get('format')!r})")


def load_checkpoint(path: str | Path) -> TrainingState:
    """The state in `path`; FileNotFoundError if absent, DamagedFileError (naming it) if
    truncated or corrupt, ValueError if it is not one of our checkpoints."""
    path = Path(path)
    tensors, metadata = read_safetensors(path, what="training checkpoint", fix=_FIX)
    _check_format(path, metadata)
    optim_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim_state.setdefault(int(index), {})[name] = value
    return TrainingState(
        step=int(metadata["step"]),
        lora={k[len("lora.") :]: v for k, v in tensors.items() if k.startswith("lora.")},
        optimizer={"state": optim_state, "param_groups": json.loads(metadata["param_groups"])},
        lr_scheduler=json.loads(metadata["lr_scheduler"]),
        rng={k[len("rng.") :]: v for k, v in tensors.items() if k.startswith("rng.")},
        history=json.loads(metadata["history"]),
        identity=RunIdentity.from_metadata(metadata),
    )


def read_identity(path: Path) -> RunIdentity:
    """The run identity in a checkpoint's header (no tensor is read); errors as `load_checkpoint`."""
    _, metadata = read_safetensors_header(path, what="training checkpoint", fix=_FIX)
    _check_format(path, metadata)
    return RunIdentity.from_metadata(metadata)


class OtherRunError(ValueError):
    """A checkpoint records another run's identity than the one resuming."""


def check_same_run(path: Path, recorded: RunIdentity, identity: RunIdentity) -> None:
    """Raise OtherRunError, naming `path` and what differs, unless `recorded` is `identity`'s run."""
    differences = identity.differences(recorded)
    if differences:
        raise OtherRunError(
            f"{path} belongs to another run: {'; '.join(differences)}. Resume needs the same settings (steps "
            "and checkpoint cadence may change), base model and dataset; train afresh in another output folder "
            "(CLI --out, node run_name)"
        )


def latest_checkpoint(folder: Path, identity: RunIdentity) -> tuple[Path, TrainingState]:
    """The newest readable checkpoint in `folder` of the run `identity`. Damaged ones and,
    when an older one of this run is found, other runs' are skipped with a log line naming
    them. FileNotFoundError when the folder holds none, OtherRunError (what differs from
    the newest) when none is of this run, DamagedFileError when none is readable."""
    found = list_checkpoints(folder)
    if not found:
        raise FileNotFoundError(f"no checkpoint to resume from in {folder}")
    unreadable, others = [], []
    for path in reversed(found):
        try:
            recorded = read_identity(path)
        except ValueError as error:
            log.warning("skipping damaged checkpoint %s: %s", path.name, error)
            unreadable.append(path.name)
            continue
        try:
            check_same_run(path, recorded, identity)
        except OtherRunError as error:
            others.append(error)
            continue
        for error in others:
            log.warning("skipping a checkpoint of another run: %s", error)
        return path, load_checkpoint(path)
    if others:
        raise others[0]
    raise DamagedFileError(
        f"every checkpoint in {folder} is truncated or corrupt ({', '.join(unreadable)}); delete them and "
        "train afresh",
        folder,
    )


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:06d}.safetensors"


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in `folder`, oldest step first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def rotate_checkpoints(folder: Path, keep: int, identity: RunIdentity) -> None:
    """Delete all but the newest `keep` checkpoints of the run `identity` (keep <= 0 keeps
    all). Checkpoints of other runs, and unreadable ones, are never deleted."""
    if keep <= 0:
        return
    ours = []
    for path in list_checkpoints(folder):
        try:
            if not identity.differences(read_identity(path)):
                ours.append(path)
        except ValueError as error:
            log.warning("rotation leaves %s alone: %s", path.name, error)
    for old in ours[:-keep]:
        old.unlink()
        log.info("removed old checkpoint %s", old)


def _jsonable(value):
    """The value as JSON would give it back (tuples become lists)."""
    return json.loads(json.dumps(value))


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
