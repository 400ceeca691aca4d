"""Moved to :mod:`attnlrp.distributed`, which the evaluation and the concept atlas share; kept as an alias of it."""

from ..distributed import distributed, gather, shard

__all__ = ["distributed", "gather", "shard"]
