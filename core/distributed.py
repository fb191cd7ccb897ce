"""torchrun support: one process per GPU (or CPU process with gloo); a no-op without torchrun."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes in the environment; pick this rank's GPU.

    Without torchrun's variables (or with WORLD_SIZE=1) nothing happens.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return Dist(rank=rank, world_size=world, local_rank=local), device


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum of ``t`` over all ranks (``t`` itself in a single process)."""
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: object, d: Dist) -> object:
    """Rank 0's value of ``obj`` on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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


def ranks_agree(module: torch.nn.Module, d: Dist) -> bool:
    """True when every rank holds the same parameters and buffers (compared by checksum)."""
    if not d.enabled:
        return True
    total = torch.zeros(2, dtype=torch.float64, device=next(module.parameters()).device)
    for i, t in enumerate(module.state_dict().values()):
        total[0] += t.double().sum()
        total[1] += (t.double().flatten() * (i + 1)).abs().sum()
    gathered = [torch.zeros_like(total) for _ in range(d.world_size)]
    dist.all_gather(gathered, total)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
