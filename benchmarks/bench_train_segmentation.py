"""Segmentation training throughput (images/s): the Train node's step against two plain reference loops.

Contenders, all on the same U-Net (``--architecture``, ``--depth``, ``--base-channels``; one
output channel), the same random 512 x 512 batches of ``--batch`` images already on the device,
and the same loss (cross-entropy + soft Dice):

- ``fp32``: the plain loop: float32, eager, default memory layout, ``torch.optim.AdamW``;
- ``bf16_cl``: the plain loop with bfloat16 autocast and channels_last (AdamW's default);
- ``ours_fast`` and ``ours_compiled``: ``TrainStep`` with ``step_options(device, speed)`` as the
  Train node builds it (bf16 autocast, channels_last, fused AdamW; compiled adds torch.compile).

Each contender gets a fresh model with the same initial weights, ``--warmup`` untimed steps
(compilation happens there), then ``--steps`` timed steps, synchronised; rounds alternate the
order of contenders and the median images/s per contender is reported, with the ratios of ours
to both references. Goal on an H100: ours >= 2x fp32 and >= 1.3x bf16_cl.

    python benchmarks/bench_train_segmentation.py --json train.json          # on a CUDA GPU
    python benchmarks/bench_train_segmentation.py --device cpu --size 64 --batch 2 --steps 2 --warmup 1 --rounds 1
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import statistics
import time
from collections.abc import Callable

import torch

from _pack import load_core  # benchmarks/ is on sys.path when a script runs

log = logging.getLogger("bench_train_segmentation")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_step(model: torch.nn.Module, device: torch.device, lr: float, bf16_channels_last: bool,
               loss_fn: Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The reference training step: no fused optimiser, no compilation."""
    if bf16_channels_last:
        model.to(device=device, memory_format=torch.channels_last)
    else:
        model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)

    def step(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if bf16_channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_channels_last):
            logits = model(images)
        loss = loss_fn(logits.float(), target, "ce+dice")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def time_contender(make_step: Callable, batches: list[tuple[torch.Tensor, torch.Tensor]], warmup: int, steps: int,
                   device: torch.device) -> float:
    """Images per second over ``steps`` timed steps after ``warmup`` untimed ones."""
    step = make_step()
    for k in range(warmup):
        step(*batches[k % len(batches)])
    _sync(device)
    start = time.perf_counter()
    for k in range(steps):
        loss = step(*batches[k % len(batches)])
    _sync(device)
    elapsed = time.perf_counter() - start
    if not math.isfinite(float(loss)):
        raise RuntimeError("the loss is not finite")
    return steps * batches[0][0].shape[0] / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--architecture", default="unet")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: leave torch's default)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    pack = load_core().__name__
    registry = importlib.import_module(f"{pack}.unet_core.segmentation.registry")
    losses = importlib.import_module(f"{pack}.unet_core.segmentation.training.losses")
    train_step = importlib.import_module(f"{pack}.unet_core.segmentation.training.train_step")
    device = torch.device(args.device)
    torch.manual_seed(0)
    initial = registry.build_model(args.architecture, depth=args.depth, base_channels=args.base_channels,
                                   out_channels=1).state_dict()
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.rand(args.batch, 3, args.size, args.size, generator=generator).to(device),
                (torch.rand(args.batch, args.size, args.size, generator=generator) > 0.7).float().to(device))
               for _ in range(4)]

    def fresh() -> torch.nn.Module:
        model = registry.build_model(args.architecture, depth=args.depth, base_channels=args.base_channels,
                                     out_channels=1)
        model.load_state_dict(initial)
        return model.train()

    def ours(speed: str) -> Callable:
        return lambda: train_step.TrainStep(fresh(), train_step.step_options(device, speed), 1e-3, 1e-4)

    contenders: dict[str, Callable] = {
        "fp32": lambda: plain_step(fresh(), device, 1e-3, False, losses.segmentation_loss),
        "bf16_cl": lambda: plain_step(fresh(), device, 1e-3, True, losses.segmentation_loss),
        "ours_fast": ours("fast"),
        "ours_compiled": ours("compiled"),
    }
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_index in range(args.rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            rates[name].append(time_contender(contenders[name], batches, args.warmup, args.steps, device))
            log.info("round %d %-14s %8.1f images/s", round_index + 1, name, rates[name][-1])
    median = {name: statistics.median(values) for name, values in rates.items()}
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "size": args.size, "batch": args.batch, "steps": args.steps,
        "warmup": args.warmup, "rounds": args.rounds,
        "model": {"architecture": args.architecture, "depth": args.depth, "base_channels": args.base_channels},
        "images_per_s": rates, "median_images_per_s": median,
        "ours_options": {s: train_step.step_options(device, s).describe() for s in ("fast", "compiled")},
        "ratios": {f"{o}/{r}": median[o] / median[r] for o in ("ours_fast", "ours_compiled") for r in ("fp32", "bf16_cl")},
        "goals": {"ours/fp32": 2.0, "ours/bf16_cl": 1.3},
    }
    for key, value in result["ratios"].items():
        log.info("%-24s %.2fx", key, value)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
