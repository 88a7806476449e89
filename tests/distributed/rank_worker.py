"""A worker run by the distributed tests under torchrun (or with torchrun's variables set by hand).

    python rank_worker.py MODE

Joins the job through ``unet_core.distributed``, then all-reduces a counter in a loop.
MODE ``kill``: rank 1 kills itself (SIGKILL) after 3 rounds; ``stall``: rank 1 sleeps
far past the collective timeout instead; ``ok``: every rank finishes 5 rounds. Exit
code 0 on success; 3 with the helper's error message on stderr when a collective failed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pack_support import load_pack  # noqa: E402

load_pack(run_init=False)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from unet_lab.unet_core import distributed  # noqa: E402


def main(mode: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    context = distributed.setup_from_env("cpu")
    try:
        for round_index in range(5):
            if context.rank == 1 and round_index == 3:
                if mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if mode == "stall":
                    time.sleep(120)
            value = torch.ones(1)
            with distributed.guard(f"round {round_index}"):
                dist.all_reduce(value)
            assert value.item() == context.world_size
        distributed.teardown(clean=True)
    except distributed.DistributedError as error:
        logging.getLogger("worker").error("error: %s", error)
        distributed.teardown(clean=False)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
