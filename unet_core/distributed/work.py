"""Splitting work over ranks: shards of a work list, per-rank seeds, the batch split, DDP.

All functions are pure given their arguments (no collective), so the same split is
computed on every rank without talking, and a 1-rank job gets the whole list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from torch import nn

from ..errors import InputError
from .context import DistContext

Item = TypeVar("Item")

_SEED_STRIDE = 1_000_003  # a prime: rank seeds of neighbouring user seeds do not collide for small jobs


def shard_indices(count: int, rank: int, world_size: int) -> list[int]:
    """Indices ``rank, rank + world, ...`` of a list of ``count`` items.

    Round-robin keeps shard sizes within one item of each other, and a sorted work list
    (file names) spreads large and small items over the ranks alike.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"rank {rank} of a world of {world_size}: expected 0 <= rank < world")
    return list(range(rank, count, world_size))


def shard(items: Sequence[Item], rank: int, world_size: int) -> list[Item]:
    """This rank's share of ``items`` (see :func:`shard_indices`)."""
    return [items[index] for index in shard_indices(len(items), rank, world_size)]


def rank_seed(seed: int, rank: int) -> int:
    """A seed for rank-local randomness (augmentation, crops): ``seed`` itself on rank 0."""
    return (int(seed) + _SEED_STRIDE * int(rank)) % (2**63 - 1)


def split_batch(global_batch: int, world_size: int) -> list[int]:
    """Per-rank batch sizes that add up to ``global_batch``; the first ranks take the remainder.

    The user's batch size stays the global one whatever the number of ranks; a rank may
    get 0 items when the batch is smaller than the world.
    """
    if global_batch < 1 or world_size < 1:
        raise InputError(f"batch {global_batch} over {world_size} rank(s): both must be at least 1")
    base, extra = divmod(global_batch, world_size)
    return [base + (1 if rank < extra else 0) for rank in range(world_size)]


def wrap_ddp(model: nn.Module, context: DistContext | None) -> nn.Module:
    """``model`` in DistributedDataParallel on the context's device; ``model`` itself outside a job.

    Parameters are broadcast from rank 0 when wrapping, so every rank starts from the
    same weights; gradients are averaged over ranks in ``backward``.
    """
    if context is None or context.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
