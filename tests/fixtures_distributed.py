"""Launching test jobs: torchrun with gloo on the CPU, and by-hand ranks (as on two machines).

Every launch has a hard wall-clock bound, and children are killed when it passes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pack_support import REPO_ROOT

LAUNCH_LIMIT_S = 240.0


@dataclass
class Finished:
    code: int
    out: str
    err: str
    seconds: float


def job_env(**extra: str) -> dict[str, str]:
    """The environment of a test job: one thread per rank, the CPU, extra variables."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    env.update(extra)
    return env


def torchrun(args: list[str], nproc: int = 2, env: dict[str, str] | None = None, cwd: Path | None = None,
             limit_s: float = LAUNCH_LIMIT_S) -> Finished:
    """``python -m torch.distributed.run --standalone --nproc_per_node N ARGS`` (a free port each time)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "--monitor_interval=0.5", *args]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env or job_env(), cwd=cwd or REPO_ROOT,
                          timeout=limit_s)
    return Finished(done.returncode, done.stdout, done.stderr, time.monotonic() - start)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def by_hand(args: list[str], world: int = 2, wait_for: tuple[int, ...] | None = None,
            env: dict[str, str] | None = None, limit_s: float = LAUNCH_LIMIT_S) -> list[Finished | None]:
    """Start ``world`` ranks with torchrun's variables set by hand and no launcher watching them.

    This is each machine's view in a two-machine job: nobody kills the survivors when a
    peer dies, so only the collective timeout (or the peer's closed connection) ends them.
    Waits for the ranks in ``wait_for`` (default: all), then kills the others (None in the result).
    """
    port = str(free_port())
    processes = []
    start = time.monotonic()
    for rank in range(world):
        rank_env = job_env(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                           GROUP_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **(env or {}))
        processes.append(subprocess.Popen([sys.executable, *args], env=rank_env, cwd=REPO_ROOT,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results: list[Finished | None] = [None] * world
    try:
        for rank, process in enumerate(processes):
            if wait_for is not None and rank not in wait_for:
                continue
            left = max(1.0, limit_s - (time.monotonic() - start))
            out, err = process.communicate(timeout=left)
            results[rank] = Finished(process.returncode, out, err, time.monotonic() - start)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results
