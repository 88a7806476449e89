"""Collectives that fail with a message naming the rank and what it waited for.

Each call is a no-op (or the identity) when no job is active, so callers write one
code path for one process and for many. A collective that fails (a peer died, or the
timeout passed) raises :class:`~.context.DistributedError`.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from .context import active, guard


def barrier(what: str = "a barrier") -> None:
    """Wait until every rank reaches this point."""
    context = active()
    if context is None or context.world_size == 1:
        return
    with guard(f"waiting for the other ranks at {what}"):
        dist.barrier()


def all_gather_objects(value: Any, what: str = "gathering results") -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` outside a job."""
    context = active()
    if context is None or context.world_size == 1:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    with guard(what):
        dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: Any, source: int = 0, what: str = "sharing a result") -> Any:
    """Rank ``source``'s ``value`` on every rank; ``value`` itself outside a job."""
    context = active()
    if context is None or context.world_size == 1:
        return value
    box = [value if context.rank == source else None]
    with guard(what):
        dist.broadcast_object_list(box, src=source)
    return box[0]
