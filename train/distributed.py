"""Data-parallel training under torchrun: which rank this process is, and sums over ranks.

A single process (no ``WORLD_SIZE``, or 1) is rank 0 of a world of 1, and every sum is the
identity, so the trainer runs one code path with and without DDP.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: global ``rank``, ``world`` size, ``local_rank``
    (its GPU on the node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """From torchrun's environment; NCCL on GPUs, gloo on CPU. Single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def all_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``t`` summed over the ranks, in place (unchanged in a single process)."""
    if info.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def rank_device(device: str, info: DistInfo) -> torch.device:
    """The device this rank trains on: ``cuda`` means the rank's own GPU (``cuda:LOCAL_RANK``);
    any other name (``cpu``, ``cuda:N``, ``mps``) is taken as given."""
    return torch.device(f"cuda:{info.local_rank}" if device == "cuda" else device)
