"""Train the tiny pixel diffusion model on Synthetic Shapes, sample it, and measure how shape-like the samples are.

The measure: the mean distance (RMS over pixels, images in [-1, 1]) from each sample to its
nearest training image, beside the same for held-out shapes of another seed (the floor: real
shapes that were never trained on) and for uniform noise and for smooth noise (the ceiling).
Samples that resemble the training shapes sit near the held-out figure, far under noise. A grid
of samples and one of training images are written as PNGs to look at.

    python scripts/check_pixel_shapes.py --device cuda --steps 3000 --out /tmp/pixel_check
    python scripts/check_pixel_shapes.py --size 16 --steps 300 --batch 16   # a slow CPU's quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pack_support import load_pack  # noqa: E402

log = logging.getLogger("check_pixel_shapes")


def nearest_rms(samples: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Per sample: RMS pixel distance to the nearest training image (both [N, C, H, W] in [-1, 1])."""
    d = torch.cdist(samples.flatten(1).double(), train.flatten(1).double()).min(1).values
    return d / samples[0].numel() ** 0.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("/tmp/pixel_check"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load_pack(run_init=False)
    from unet_lab.unet_core.pixel_diffusion.pipeline import (
        PRESETS,
        preview_grid,
        sample_images,
        to_model_space,
        train_from_images,
    )
    from unet_lab.unet_core.pixel_diffusion.sampling import SampleSettings
    from unet_lab.unet_core.pixel_diffusion.shapes import make_shapes
    from unet_lab.unet_core.pixel_diffusion.training import TrainSettings

    images, _ = make_shapes(args.count, args.size, 0)
    start = time.time()

    def progress(done: int, total: int, message: str = "") -> None:
        if done % 50 == 0 or done == total:
            log.info("step %d/%d %s (%.0f s)", done, total, message, time.time() - start)

    pm, result = train_from_images(images, next(iter(PRESETS)), TrainSettings(steps=args.steps, batch_size=args.batch),
                                   args.device, progress)
    train_s = time.time() - start
    start = time.time()
    sampled = to_model_space(sample_images(pm, SampleSettings(args.sampler, args.sample_steps), 1, args.samples,
                                           device=args.device))
    sample_s = time.time() - start
    train = to_model_space(images)
    held_out = to_model_space(make_shapes(args.samples, args.size, 12345)[0])
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(sampled.shape, generator=g) * 2 - 1
    smooth = F.interpolate(torch.rand(args.samples, 3, args.size // 8, args.size // 8, generator=g) * 2 - 1,
                           size=args.size, mode="bilinear", align_corners=False)
    figures = {name: float(nearest_rms(x, train).mean()) for name, x in
               (("samples", sampled), ("held_out_shapes", held_out), ("uniform_noise", noise),
                ("smooth_noise", smooth))}
    report = {"size": args.size, "train_steps": args.steps, "batch": args.batch, "device": args.device,
              "train_seconds": round(train_s, 1), "sample_seconds": round(sample_s, 1),
              "final_loss_mean_100": sum(result.losses[-100:]) / len(result.losses[-100:]),
              "nearest_training_image_rms": figures,
              "samples_over_smooth_noise": figures["samples"] / figures["smooth_noise"]}
    args.out.mkdir(parents=True, exist_ok=True)
    scale = max(1, 256 // args.size)
    for name, x in (("samples", sampled), ("training", train[: args.samples])):
        grid = preview_grid(x, args.samples)
        grid.resize((grid.width * scale, grid.height * scale), 0).save(args.out / f"{name}.png")
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    log.info("%s", json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
