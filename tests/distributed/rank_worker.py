"""A worker run by the distributed tests under torchrun (or with torchrun's variables set by hand).

    python rank_worker.py MODE

Joins the job through ``unet_core.distributed``, then all-reduces a counter in a loop.
MODE ``kill``: rank 1 kills itself (SIGKILL) after 3 rounds; ``stall``: rank 1 sleeps
far past the collective timeout instead; ``ok``: every rank finishes 5 rounds;
``gradients``: one training step of a GroupNorm U-Net through the training helper (DDP, the
global batch's loss) next to the same step on the whole batch in this process; rank 0
prints ``gradients <largest difference> <largest gradient>``. Exit code 0 on success; 3 with
the helper's error message on stderr when a collective failed.
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


def compare_gradients(context: distributed.DistContext) -> None:
    import copy

    from unet_lab.unet_core.segmentation.registry import build_model
    from unet_lab.unet_core.segmentation.training.losses import segmentation_loss
    from unet_lab.unet_core.segmentation.training.ranks import batch_share, global_batch_loss, prepare_model

    torch.manual_seed(0)
    model = build_model("unet", in_channels=3, out_channels=1, depth=2, base_channels=8, norm="group")
    whole = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(5, 3, 32, 32, generator=generator)  # 5: the ranks get 3 and 2 samples
    masks = (torch.rand(5, 32, 32, generator=generator) > 0.6).float()
    share = batch_share(5, context)
    trainee = prepare_model(model, context)
    loss, _value = global_batch_loss(trainee(images[share.start:share.stop]), masks[share.start:share.stop],
                                     "ce+dice", None, context)
    loss.backward()
    segmentation_loss(whole(images), masks, "ce+dice").backward()
    pairs = list(zip(model.parameters(), whole.parameters(), strict=True))
    worst = max(float((mine.grad - reference.grad).abs().max()) for mine, reference in pairs)
    top = max(float(reference.grad.abs().max()) for _mine, reference in pairs)
    if context.rank == 0:
        sys.stdout.write(f"gradients {worst:.3e} {top:.3e}\n")


def main(mode: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    context = distributed.setup_from_env("cpu")
    if mode == "gradients":
        compare_gradients(context)
        distributed.teardown(clean=True)
        return 0
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
