"""The process group of a ``torchrun`` launch: read the launcher's environment, start, end.

``torchrun`` (or ``python -m torch.distributed.run``) starts one process per rank and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK`` (the node's
index), ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`setup_from_env` turns them into a
:class:`DistContext` and a default process group: NCCL when the rank runs on CUDA (one
device per local rank), gloo on the CPU. Every collective carries a timeout
(``UNET_LAB_DIST_TIMEOUT`` seconds, default :data:`DEFAULT_TIMEOUT_S`) so a rank that died
ends the job with an error instead of a hang; on NCCL the watchdog tears the process down
when the timeout passes (``TORCH_NCCL_ASYNC_ERROR_HANDLING=1`` unless the user set it).

Invariant: at most one context is active per process; :func:`active` is None outside a
launch (a ComfyUI server, tests, a plain ``dev.py run``), and callers then run as one rank.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import UNetLabError

log = logging.getLogger(__name__)

TIMEOUT_ENV = "UNET_LAB_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(UNetLabError):
    """A rank could not join the job, or a collective failed (another rank died or timed out)."""


@dataclass(frozen=True)
class DistContext:
    """One rank's place in the job.

    ``node_rank`` is the machine's index (torchrun's ``GROUP_RANK``), ``host`` its name;
    ``device`` is where this rank computes (``cuda:<local_rank>`` under NCCL).
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    host: str
    backend: str
    device: torch.device
    timeout_s: float

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes shared files and prints the report."""
        return self.rank == 0

    def describe(self) -> str:
        """``rank R/W (node N, host H)``: how messages name this rank."""
        return f"rank {self.rank}/{self.world_size} (node {self.node_rank}, host {self.host})"


_active: DistContext | None = None


def active() -> DistContext | None:
    """The running job's context, or None when this process runs alone."""
    return _active


@contextlib.contextmanager
def use_context(context: DistContext | None) -> Iterator[DistContext | None]:
    """Make ``context`` active for a block (the runner and tests), then restore the previous one."""
    global _active
    previous = _active
    _active = context
    try:
        yield context
    finally:
        _active = previous


def launched_by_torchrun(environ: dict[str, str] | None = None) -> bool:
    """True when the launcher's variables are set (``torchrun`` or any launcher that sets them)."""
    environ = os.environ if environ is None else environ
    return all(name in environ for name in _LAUNCH_VARIABLES)


def timeout_from_env(environ: dict[str, str] | None = None) -> float:
    """The collective timeout in seconds: ``UNET_LAB_DIST_TIMEOUT`` or the default."""
    environ = os.environ if environ is None else environ
    raw = environ.get(TIMEOUT_ENV, "")
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise DistributedError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    if value <= 0:
        raise DistributedError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


def _int_env(environ: dict[str, str], name: str, default: int) -> int:
    try:
        return int(environ.get(name, default))
    except ValueError:
        raise DistributedError(f"{name}={environ.get(name)!r} is not an integer; was this launched by torchrun?") from None


def setup_from_env(device: str | torch.device | None = None, timeout_s: float | None = None) -> DistContext:
    """Join the job described by the launcher's environment; the context becomes :func:`active`.

    ``device``: "cuda" / "cpu" / None (CUDA when present). On CUDA each rank takes device
    ``LOCAL_RANK`` and the backend is NCCL; on the CPU it is gloo. Raises DistributedError
    when the variables are missing, CUDA has fewer devices than local ranks, or the
    rendezvous does not complete within the timeout.
    """
    global _active
    environ = dict(os.environ)
    if not launched_by_torchrun(environ):
        missing = [name for name in _LAUNCH_VARIABLES if name not in environ]
        raise DistributedError(f"not launched by torchrun: {', '.join(missing)} unset")
    if _active is not None or dist.is_initialized():
        raise DistributedError("a process group is already running in this process")
    timeout = timeout_from_env(environ) if timeout_s is None else float(timeout_s)
    rank = _int_env(environ, "RANK", 0)
    world = _int_env(environ, "WORLD_SIZE", 1)
    local_rank = _int_env(environ, "LOCAL_RANK", 0)
    local_world = _int_env(environ, "LOCAL_WORLD_SIZE", world)
    node_rank = _int_env(environ, "GROUP_RANK", 0)
    want = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise DistributedError(f"rank {rank}: local rank {local_rank} needs a CUDA device, but this machine "
                                   f"has {torch.cuda.device_count()}; lower --nproc_per_node")
        torch.cuda.set_device(local_rank)
        rank_device, backend = torch.device("cuda", local_rank), "nccl"
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    else:
        rank_device, backend = torch.device("cpu"), "gloo"
    context = DistContext(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world,
                          node_rank=node_rank, host=socket.gethostname(), backend=backend, device=rank_device,
                          timeout_s=timeout)
    try:
        dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout))
    except Exception as error:  # the store or the peers did not answer
        raise DistributedError(f"{context.describe()}: could not join the job at "
                               f"{environ['MASTER_ADDR']}:{environ['MASTER_PORT']} within {timeout:g} s: {error}") from error
    _active = context
    log.debug("%s joined (%s, device %s, timeout %g s)", context.describe(), backend, rank_device, timeout)
    return context


@contextlib.contextmanager
def guard(what: str) -> Iterator[None]:
    """Turn a failing collective inside the block into a DistributedError naming rank and ``what``.

    Use it around code whose collectives are hidden (DDP's gradient all-reduce in
    ``backward``). Outside a job it does nothing.
    """
    context = active()
    if context is None or context.world_size == 1:
        yield
        return
    try:
        yield
    except DistributedError:
        raise
    except (RuntimeError, dist.DistError) as error:
        raise DistributedError(
            f"{context.describe()}: {what} failed after waiting up to {context.timeout_s:g} s; another rank "
            f"probably failed or was killed (see its message). Cause: {str(error).splitlines()[0] if str(error) else error!r}"
        ) from error


def teardown(clean: bool = True) -> None:
    """Leave the job: with ``clean``, wait for every rank first (a barrier), then end the group.

    ``clean=False`` ends the group at once (after a failure, when peers may be gone);
    peers blocked in a collective then fail fast or at their timeout.
    """
    global _active
    context, _active = _active, None
    if not dist.is_initialized():
        return
    try:
        if clean and context is not None and context.world_size > 1:
            with use_context(context), guard("waiting for the other ranks at the end of the run"):
                dist.barrier()
    finally:
        dist.destroy_process_group()
