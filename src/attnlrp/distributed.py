"""Processes started by ``torchrun``: which one this is, its share of a list, and plain data moved between them.

The two corpus-sized jobs shard with these: the evaluation (each process takes every ``world``-th sample; the
records are gathered on every process before summarising) and the concept atlas (each process explains every
``world``-th chunk of windows; process 0 receives the chunks' results and is the only one that writes the atlas).
What moves is plain data (records, small tensors), pickled by torch's object collectives, so one process group
serves both: gloo on CPU, NCCL on GPUs (each process on the GPU of its ``LOCAL_RANK``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterator, Sequence

import torch

__all__ = ["broadcast", "current", "distributed", "gather", "gather_to_root", "shard"]


def shard(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """This process's share: every ``world``-th item from ``rank`` (balanced, and independent of timing)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    return list(items[rank::world])


def current() -> tuple[int, int]:
    """``(rank, world)`` of the initialised default process group, or ``(0, 1)`` when there is none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


#: How long a process waits for the others at one exchange before the run fails (torch's own defaults, 10 min with
#: NCCL, would fail an evaluation whose processes finish their shares further apart than that).
TIMEOUT_ENV = "ATTNLRP_DISTRIBUTED_TIMEOUT_MINUTES"
DEFAULT_TIMEOUT_MINUTES = 120.0


@contextmanager
def distributed() -> Iterator[tuple[int, int]]:
    """``(rank, world)``: from torchrun's environment (a process group with gloo on CPU, NCCL on GPUs, torn
    down on exit; with NCCL the process's current GPU is that of its ``LOCAL_RANK``, so ``--device cuda`` puts
    each process on its own GPU), or ``(0, 1)`` for a plain single process. A group the caller initialised
    already is used as it is, and left up. A process waits at most ``$ATTNLRP_DISTRIBUTED_TIMEOUT_MINUTES``
    (default 120) for the others at one exchange."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        yield current()
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, 1
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    minutes = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        timeout = timedelta(minutes=float(minutes) if minutes else DEFAULT_TIMEOUT_MINUTES)
    except ValueError:
        from .errors import ExplainError

        raise ExplainError(f"${TIMEOUT_ENV} must be a number of minutes, not {minutes!r}") from None
    if backend == "nccl":  # before the group: its communicators and the object exchanges use the current GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timeout)
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def gather(records: list[Any], world: int) -> list[Any]:
    """Every process's records, on every process (``all_gather_object``); the input itself for one process."""
    if world <= 1:
        return records
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, records)
    return [r for part in parts for r in part]


def gather_to_root(value: Any, rank: int, world: int) -> list[Any] | None:
    """Every process's ``value``, in rank order, on process 0 (``gather_object``); ``None`` on the others."""
    if world <= 1:
        return [value]
    import torch.distributed as dist

    parts: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(value, parts, dst=0)
    return parts


def broadcast(value: Any, rank: int, world: int) -> Any:
    """Process 0's ``value``, on every process (``broadcast_object_list``); the others' ``value`` is ignored."""
    if world <= 1:
        return value
    import torch.distributed as dist

    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
