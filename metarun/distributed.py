"""Several processes, one meta-batch: each rank meta-trains on its share of the tasks.

`torchrun --nproc_per_node=K -m metarun train ...` starts K processes (it sets RANK,
WORLD_SIZE, LOCAL_RANK and the rendezvous address). Every rank draws the same meta-batch
from the same seeded generator and computes the meta-gradient of its own contiguous share
of the tasks; one all-reduce averages the shares, so each update equals the single-process
update over the whole meta-batch. Gradients are averaged explicitly rather than through
DistributedDataParallel because the engine differentiates through torch.func transforms and
one backward call per task, which DDP's once-per-backward reducer does not expect.

A single process is a world of one: every method is then a no-op, so the rest of the code
has one path.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from metarun.errors import ConfigError


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start() -> None:
    """Joins the process group torchrun set up: gloo for CPU tensors, NCCL for CUDA ones; the
    process leaves it when it exits."""
    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    atexit.register(_leave)


def _leave() -> None:
    """Destroys the process group while the interpreter is still whole: left to interpreter
    shutdown, gloo's worker threads were torn down with it and a rank could abort after a
    finished run ("terminate called without an active exception", SIGABRT; pytorch#190489)."""
    if dist.is_initialized():
        dist.destroy_process_group()


class World:
    """This process's rank among `size` processes meta-training one model."""

    def __init__(self, rank: int = 0, size: int = 1) -> None:
        self.rank, self.size = rank, size

    @classmethod
    def current(cls) -> World:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics and progress output."""
        return self.rank == 0

    def check_divides(self, count: int, setting: str) -> None:
        if count % self.size:
            raise ConfigError(
                f"{setting}={count} cannot be split evenly over {self.size} processes. "
                f"Set {setting} to a multiple of {self.size}, or start as many processes "
                f"as divide it (torchrun --nproc_per_node)."
            )

    def my_share(self, items: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of `items` along dim 0 (parts differ by at most one)."""
        return items.tensor_split(self.size)[self.rank] if self.size > 1 else items

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Replaces each .grad by its mean over ranks, in one all-reduce."""
        if self.size == 1:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        for grad, part in zip(grads, flat.split([g.numel() for g in grads])):
            grad.copy_(part.view_as(grad))

    def mean(self, *values: float) -> tuple[float, ...]:
        """The mean over ranks of each value."""
        if self.size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tuple((tensor / self.size).tolist())

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (e.g. a stop signal reached one rank)."""
        if self.size == 1:
            return flag
        tensor = torch.tensor([int(flag)])
        dist.all_reduce(tensor)
        return bool(tensor.item())

    def gather(self, part: torch.Tensor) -> torch.Tensor:
        """Every rank's `part` concatenated along dim 0 in rank order, on every rank."""
        if self.size == 1:
            return part
        sizes = [torch.zeros(1, dtype=torch.long, device=part.device) for _ in range(self.size)]
        dist.all_gather(sizes, torch.tensor([part.shape[0]], device=part.device))
        longest = int(max(sizes).item())
        padded = torch.zeros(longest, *part.shape[1:], dtype=part.dtype, device=part.device)
        padded[: part.shape[0]] = part
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: int(n.item())] for p, n in zip(parts, sizes)])

    def broadcast_state(self, module: nn.Module) -> None:
        """Gives every rank rank 0's parameters and buffers."""
        if self.size == 1:
            return
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)

    def broadcast_object(self, value):
        """Rank 0's value, on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()
