"""torchrun support: one process per GPU (or CPU process with gloo); a no-op without torchrun."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# Rank 0 measures the crop and builds the decode-once cache (hours for a large first build on a slow
# disk) while the other ranks wait. They wait on the CPU "control" group with this timeout, never on
# the NCCL group, whose 10-minute timeout stays as the watchdog for hung training steps.
CONTROL_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # A gloo group over the same ranks for small CPU messages (stop flags, save decisions, waits for
    # rank 0's file work): no device sync, and its own long timeout.
    control: Any = field(default=None, compare=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0


def stop_with_launcher() -> None:
    """Have Linux send this process SIGTERM when torchrun, its parent, dies.

    torchrun starts each worker in a session of its own, so ``kill -9`` of torchrun alone would leave
    the workers training on, writing the run folder that a ``--resume`` then shares with them. With
    SIGTERM they save last.pt at the next step and stop, as after Ctrl-C. (If torchrun died even
    before this call, joining the group fails: torchrun holds the group's store.)
    """
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # no prctl: the workers outlive a killed torchrun, as before


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes in the environment; pick this rank's GPU.

    Without torchrun's variables (or with WORLD_SIZE=1) nothing happens.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    stop_with_launcher()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        # torchrun keeps one key-value store over restarts of the group: a restarted process would read the
        # addresses of the processes it replaced (connection refused, then a hang), so each attempt gets its own keys.
        from torch.distributed.rendezvous import rendezvous

        store, _, _ = next(rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"attempt_{attempt}", store), rank=rank,
                                world_size=world, device_id=device if device.type == "cuda" else None)
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return Dist(rank=rank, world_size=world, local_rank=local, control=control), device


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum of ``t`` over all ranks (``t`` itself in a single process)."""
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flags: list[bool], d: Dist) -> list[bool]:
    """For each flag, whether it is set on any rank (a CPU message: no device sync)."""
    if not d.enabled:
        return flags
    t = torch.tensor(flags, dtype=torch.float32)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=d.control)
    return [v > 0 for v in t.tolist()]


def broadcast_object(obj: object, d: Dist) -> object:
    """Rank 0's value of ``obj`` on every rank (the others may wait for it as long as CONTROL_TIMEOUT)."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=d.control)
    return box[0]


def gather_objects(obj: object, d: Dist) -> list[object]:
    """Every rank's ``obj``, in rank order, on every rank ([obj] in a single process)."""
    if not d.enabled:
        return [obj]
    out: list[object] = [None] * d.world_size
    dist.all_gather_object(out, obj, group=d.control)
    return out


def average_buffers(module: torch.nn.Module, d: Dist) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks, in place.

    Each rank updates them from its own shard during a step, so without this the ranks
    would validate with slightly different models, and not with the one rank 0 saves.
    """
    if d.enabled:
        for b in module.buffers():
            if b.is_floating_point():
                dist.all_reduce(b, op=dist.ReduceOp.SUM)
                b /= d.world_size


def first_difference(state: dict[str, torch.Tensor], d: Dist) -> str | None:
    """The name of the first tensor of ``state`` that is not the same on every rank (None: all agree)."""
    if not d.enabled or not state:
        return None
    # Two checksums per tensor (plain and position-weighted sums) catch a difference without moving the tensors.
    sums = torch.stack([torch.stack([t.double().sum(), (t.double().flatten() * torch.arange(
        1, t.numel() + 1, device=t.device, dtype=torch.float64)).sum()]) for t in state.values()])
    gathered = [torch.zeros_like(sums) for _ in range(d.world_size)]
    dist.all_gather(gathered, sums)
    differs = torch.stack([(g != gathered[0]).any(dim=1) for g in gathered]).any(dim=0)
    names = list(state)
    return names[int(differs.nonzero()[0])] if differs.any() else None


def barrier(d: Dist) -> None:
    """Wait for every rank (on the control group: rank 0 may be building the cache)."""
    if d.enabled:
        dist.barrier(group=d.control)


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
