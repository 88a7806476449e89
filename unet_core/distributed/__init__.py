"""Runs under ``torchrun``: process-group set-up and teardown, ranks, sharding, seeds, DDP.

Only the headless runner starts a process group (:func:`setup_from_env`); everything
else asks :func:`active` and runs single-process when it returns None, which is always
the case inside a ComfyUI server.
"""

from .collectives import all_gather_objects, barrier, broadcast_object
from .context import (
    DEFAULT_TIMEOUT_S,
    TIMEOUT_ENV,
    DistContext,
    DistributedError,
    active,
    guard,
    launched_by_torchrun,
    setup_from_env,
    teardown,
    use_context,
)
from .work import rank_seed, shard, shard_indices, split_batch, wrap_ddp

__all__ = [
    "DEFAULT_TIMEOUT_S", "TIMEOUT_ENV", "DistContext", "DistributedError", "active", "all_gather_objects",
    "barrier", "broadcast_object", "guard", "launched_by_torchrun", "rank_seed", "setup_from_env", "shard",
    "shard_indices", "split_batch", "teardown", "use_context", "wrap_ddp",
]
