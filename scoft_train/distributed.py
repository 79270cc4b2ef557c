"""Data-parallel training over several processes, started by `accelerate launch`.

`accelerate launch --multi_gpu --num_processes N -m scoft_train train ...` (or `train
--num-processes N`, which re-launches itself that way) starts N copies of the command.
Each calls `start()`, which lets accelerate set up the process group (NCCL on GPUs, one
GPU per process; gloo on CPU) and returns this process's place in it. The LoRA loop
(loop.py) then asks `context()` where it stands:

- one process (the ComfyUI node, the tests, a plain `python -m scoft_train train`): the
  loop runs exactly as it always has, no collective is ever called;
- N processes: every process draws the same global batch and the same noise from the same
  seeded generator and keeps its 1/N slice, gradients are averaged across processes
  before clipping, the logged losses are averaged too, and only rank 0 writes files.
  So N processes with global batch B train the same LoRA as one process with batch B
  (up to float summation order).

Nothing here imports accelerate until a multi-process run starts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ProcessGroup:
    """This process's rank among `world_size` training processes (1 = no process group)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def _collective_device(self, tensor: torch.Tensor) -> torch.device:
        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return tensor.device

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over processes of `tensor` (a new tensor on tensor's device)."""
        work = tensor.detach().to(self._collective_device(tensor), copy=True)
        torch.distributed.all_reduce(work, op=torch.distributed.ReduceOp.SUM)
        return (work / self.world_size).to(tensor.device)

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's `tensor` on every process."""
        work = tensor.to(self._collective_device(tensor), copy=True)
        torch.distributed.broadcast(work, src=0)
        return work.to(tensor.device)


SINGLE = ProcessGroup()


def context() -> ProcessGroup:
    """Where this process stands: SINGLE unless a process group of more than one is running."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return ProcessGroup(dist.get_rank(), dist.get_world_size())
    return SINGLE


def launched_processes() -> int:
    """How many processes the launcher started (WORLD_SIZE; 1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start(device: str) -> tuple[ProcessGroup, str]:
    """Join the process group set up by the launcher, when there is one; returns it and the
    device this process trains on ("cuda" becomes this process's own GPU)."""
    if launched_processes() <= 1:
        return SINGLE, device
    from accelerate import PartialState

    state = PartialState(cpu=torch.device(device).type == "cpu")
    group = context()
    if not group.active:
        raise RuntimeError(f"launched as {launched_processes()} processes, but accelerate set up no process group "
                           f"(device {device!r}); use --device cpu or cuda")
    return group, (str(state.device) if torch.device(device).type == "cuda" else device)


def finish(group: ProcessGroup) -> None:
    """End a multi-process run once every process is done (rank 0 included, with its files): wait for
    all, then tear the process group down, so no process exits while a peer still holds a connection to
    it (gloo aborts the process that does). Nothing to do in one process."""
    if group.active:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def shard_rows(global_rows: int, local_rows: int, group: ProcessGroup) -> torch.Tensor:
    """Which rows of a globally drawn tensor this process keeps. A micro-batch is `global_rows`
    examples; an objective may stack k such groups (e.g. instance and class images), so a local
    tensor of k * global_rows / world_size rows takes the rank's slice of each group."""
    per_rank = global_rows // group.world_size
    if local_rows % per_rank:
        raise ValueError(f"a random draw of {local_rows} rows does not match the local batch of {per_rank} "
                         f"(global batch {global_rows} over {group.world_size} processes)")
    groups = local_rows // per_rank
    start = group.rank * per_rank
    return torch.cat([torch.arange(g * global_rows + start, g * global_rows + start + per_rank)
                      for g in range(groups)])


def local_batch(batch: dict, global_rows: int, group: ProcessGroup) -> dict:
    """This process's slice of a micro-batch drawn at the global size: every tensor whose first
    dimension and every list whose length is `global_rows` is cut; anything else is kept."""
    per_rank = global_rows // group.world_size
    cut = slice(group.rank * per_rank, (group.rank + 1) * per_rank)
    out = {}
    for key, value in batch.items():
        if (isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == global_rows) or (
                isinstance(value, list) and len(value) == global_rows):
            out[key] = value[cut]
        else:
            out[key] = value
    return out


def relaunch_command(num_processes: int, argv: list[str]) -> list[str]:
    """The command that runs `python -m scoft_train <argv>` as `num_processes` processes through
    accelerate's launcher (one machine, a free port, so that two runs can share a machine)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
        "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no",
        "--dynamo_backend", "no", "-m", "scoft_train", *argv,
    ]


def relaunch(num_processes: int, argv: list[str]) -> int:
    """Run `python -m scoft_train <argv>` as `num_processes` processes; the launcher's exit status."""
    return subprocess.call(relaunch_command(num_processes, argv))


def without_option(argv: list[str], option: str) -> list[str]:
    """`argv` without `option VALUE` / `option=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out
