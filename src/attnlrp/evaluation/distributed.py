"""Sharding an evaluation across processes started by ``torchrun``: each takes its share of the samples, and
the records are gathered on every process before summarising (records are plain data, so that is all it takes)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

__all__ = ["distributed", "gather", "shard"]


def shard(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """This process's share: every ``world``-th item from ``rank`` (balanced, and independent of timing)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    return list(items[rank::world])


@contextmanager
def distributed() -> Iterator[tuple[int, int]]:
    """``(rank, world)``: from torchrun's environment (a process group with gloo on CPU, NCCL on GPUs, torn
    down on exit), or ``(0, 1)`` for a plain single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, 1
        return
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    try:
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def gather(records: list[dict[str, Any]], world: int) -> list[dict[str, Any]]:
    """Every process's records, on every process (``all_gather_object``); the input itself for one process."""
    if world <= 1:
        return records
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, records)
    return [r for part in parts for r in part]
