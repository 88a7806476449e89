"""Tiled segmentation of one large IMAGE, end to end: host IMAGE in, host MASK/probabilities out.

What it times: ``unet_core.segmentation.inference.segment`` on one ``[1, 8192, 8192, 3]`` float32
host tensor (as ComfyUI hands an IMAGE to a node) with the 64-1024 U-Net (``unet`` from the
registry: depth 4, widths 64..1024, batch norm; random weights, eval mode, BatchNorm running
statistics set by a few training-mode passes over crops of the image, so they are not the
identity), tile 512, overlap 0.25, gaussian blending; for speed ``exact``, ``fast`` and, with
``--compile``, ``compiled``. Each speed is warmed up on one tile row of the image (the same
batch shapes as the timed run, so cuDNN / compile work is not timed), then timed ``--repeats``
times, synchronised, with ``torch.cuda.reset_peak_memory_stats`` before and
``max_memory_allocated`` after each run. The time includes everything ``segment`` does: the
value checks, the copy to the GPU, tiling, blending and the copy of both outputs back.

Split: "model" is the same number and shape of model calls on random device tensors, timed
alone; "rest" is the end-to-end time minus that (reading, blending, transfers, host copies).
Agreement: ``fast`` (and ``compiled``) against ``exact``: largest probability difference and the
fraction of mask pixels that differ.

Targets (the lead's, on an H100): at most 2 s and 8 GB (10^9 bytes) of peak GPU memory for the
``fast`` run. The JSON records both, per speed, with pass/fail.

    python benchmarks/bench_tiled.py --device cuda --json tiled.json [--compile]
    python benchmarks/bench_tiled.py --quick        # a small CPU run that checks the script
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pack import load_core  # noqa: E402

log = logging.getLogger("bench_tiled")
TARGET_TIME_S = 2.0
TARGET_PEAK_GB = 8.0
MEAN, STD = 0.5, 0.25  # the checkpoint normalisation given to segment()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_image(size: int, device: torch.device) -> torch.Tensor:
    """A deterministic [1, size, size, 3] float32 host IMAGE: smooth gradients, waves, discs and bars."""
    lin = torch.linspace(0.0, 1.0, size, device=device)
    y, x = lin[:, None], lin[None, :]
    wave = 0.5 + 0.5 * torch.sin(2 * torch.pi * (7 * x + 3 * y))
    cells = 24.0
    fx, fy = (x * cells) % 1.0 - 0.5, (y * cells) % 1.0 - 0.5
    discs = ((fx ** 2 + fy ** 2) < 0.09).float()
    bars = (((x * 53.0) % 1.0) < 0.2).float() * (y > 0.5).float()
    red = 0.6 * x + 0.4 * discs * wave
    green = (0.5 * y + 0.5 * wave * (1.0 - discs)).expand(size, size)
    blue = (0.3 + 0.5 * bars + 0.2 * discs * (1 - x)).expand(size, size)
    image = torch.stack([red.expand(size, size), green, blue], dim=-1).clamp_(0.0, 1.0)[None]
    return image.to("cpu").contiguous()


def build_unet(base: int, depth: int, image: torch.Tensor, device: torch.device, seed: int = 0) -> nn.Module:
    """The registry's U-Net, random weights; BN running stats from training-mode passes over image crops."""
    from unet_lab.unet_core.segmentation.registry import build_model

    torch.manual_seed(seed)
    model = build_model("unet", in_channels=3, out_channels=1, depth=depth, base_channels=base, norm="batch")
    model.to(device)
    crop = min(256, image.shape[1])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None  # cumulative average over the calibration passes
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.normal_(m.bias, 0.0, 0.1)
        model.train()
        for i in range(3):
            y0 = (i * 997) % max(1, image.shape[1] - crop)
            x0 = (i * 1511) % max(1, image.shape[2] - crop)
            x = (image[:, y0:y0 + crop, x0:x0 + crop].permute(0, 3, 1, 2).to(device) - MEAN) / STD
            model(torch.cat([x, x.flip(-1)]))
    return model.eval()


def model_only_seconds(model: nn.Module, speed: str, device: torch.device, plan: Any, tile_batch: int,
                       classes: int) -> float:
    """The model calls of one segment() run (same count and shapes), on random device input, timed alone."""
    from unet_lab.unet_core.segmentation.inference.predictor import make_predictor

    predict = make_predictor(model, device, classes, False, speed=speed)
    nx = len(plan.xs)
    sizes = [min(tile_batch, nx - i) for i in range(0, nx, tile_batch)] * len(plan.ys)
    inputs = {n: torch.randn(n, 3, plan.tile_h, plan.tile_w, device=device) for n in set(sizes)}
    for n in inputs:  # warm every shape
        predict(inputs[n])
    _sync(device)
    start = time.perf_counter()
    for n in sizes:
        predict(inputs[n])
    _sync(device)
    return time.perf_counter() - start


def _speed_ran(model: nn.Module, device: torch.device, speed: str) -> str:
    """What actually ran: 'compiled' falls back to 'fast' when torch.compile fails (see fast.py)."""
    if speed == "exact":
        return speed
    from unet_lab.unet_core.segmentation.speed.fast import prepare_inference

    return prepare_inference(model, device, speed).speed  # the cached forward segment() used


def run_speed(args: argparse.Namespace, model: nn.Module, meta: Any, image: torch.Tensor, speed: str,
              device: torch.device) -> tuple[dict[str, Any], Any]:
    from unet_lab.unet_core.segmentation.inference.segment import segment

    def once(img: torch.Tensor) -> Any:
        return segment(model, meta, img, tile_size=args.tile, overlap=args.overlap, blend="gaussian",
                       device=device, speed=speed, tile_batch=args.tile_batch)

    _sync(device)
    start = time.perf_counter()
    once(image[:, :args.tile].contiguous())  # one tile row: the timed run's batch shapes
    _sync(device)
    warmup_s = time.perf_counter() - start
    times, peaks, result = [], [], None
    for _ in range(args.repeats):
        result = None
        if device.type == "cuda":  # the allocator's cache stays warm, as between two runs of a node
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        start = time.perf_counter()
        result = once(image)
        _sync(device)
        times.append(time.perf_counter() - start)
        peaks.append(torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0)
    time_s = statistics.median(times)
    peak_gb = max(peaks) / 1e9
    row: dict[str, Any] = {
        "speed": speed, "speed_ran": _speed_ran(model, device, result.speed), "time_s": time_s, "times_s": times, "min_time_s": min(times),
        "warmup_s": warmup_s, "peak_gpu_gb": peak_gb, "peak_gpu_gib": max(peaks) / 2**30,
        "tiles": result.tiles, "tile_batch": result.tile_batch, "tile_size": result.tile_size,
        "megapixels_per_s": image.shape[1] * image.shape[2] / time_s / 1e6,
    }
    if device.type == "cuda" and image.shape[1] >= 8192:  # the targets are for the full-size GPU run
        row["pass_time"], row["pass_memory"] = time_s <= TARGET_TIME_S, peak_gb <= TARGET_PEAK_GB
        row["pass"] = row["pass_time"] and row["pass_memory"]
    else:
        row["pass_time"] = row["pass_memory"] = row["pass"] = None
    if not args.no_split:
        from unet_lab.unet_core.segmentation.inference.tiling import plan_tiles

        plan = plan_tiles(image.shape[1], image.shape[2], result.tile_size, args.overlap,
                          int(getattr(model, "size_divisor", 1)))
        row["model_s"] = model_only_seconds(model, speed, device, plan, result.tile_batch, 1)
        row["rest_s"] = time_s - row["model_s"]
    return row, result


def agreement(exact: Any, other: Any) -> dict[str, float]:
    diff = (exact.probabilities - other.probabilities).abs()
    return {"max_abs_probability": float(diff.max()), "mean_abs_probability": float(diff.mean()),
            "mask_pixels_differing": float((exact.masks != other.masks).float().mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="a small CPU run (256 px image, widths 8..128)")
    ap.add_argument("--compile", action="store_true", help="also time speed='compiled'")
    ap.add_argument("--size", type=int, default=8192, help="image side in px")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--tile-batch", type=int, default=None, help="tiles per model call (default: segment's choice)")
    ap.add_argument("--base", type=int, default=64, help="first-level width (64 -> widths 64..1024)")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--speeds", nargs="*", default=None, help="default: exact fast (+ compiled with --compile)")
    ap.add_argument("--no-split", action="store_true", help="skip the model-only timing")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.quick:
        args.device, args.size, args.tile, args.base, args.repeats = "cpu", 256, 64, 8, 1
        torch.set_num_threads(1)
    device = torch.device(args.device)
    if device.type == "cuda" and args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    load_core()
    speeds = args.speeds or (["exact", "fast"] + (["compiled"] if args.compile else []))

    start = time.perf_counter()
    image = make_image(args.size, device)
    log.info("image %s made in %.2f s", tuple(image.shape), time.perf_counter() - start)
    model = build_unet(args.base, args.depth, image, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    meta = {"normalization": {"mean": [MEAN] * 3, "std": [STD] * 3}, "class_names": ["foreground"],
            "threshold": 0.5}
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "image": list(image.shape), "image_dtype": str(image.dtype),
        "model": {"architecture": "unet", "widths": [args.base * 2 ** i for i in range(args.depth + 1)],
                  "norm": "batch", "params_M": sum(p.numel() for p in model.parameters()) / 1e6},
        "tile": args.tile, "overlap": args.overlap, "blend": "gaussian",
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "targets": {"time_s": TARGET_TIME_S, "peak_gpu_gb": TARGET_PEAK_GB, "applies_to": "fast on CUDA, 8192 px"},
        "runs": {}, "agreement": {},
    }
    outputs: dict[str, Any] = {}
    for speed in speeds:
        row, outputs[speed] = run_speed(args, model, meta, image, speed, device)
        results["runs"][speed] = row
    if "exact" in outputs:
        for speed, out in outputs.items():
            if speed != "exact":
                results["agreement"][f"{speed}_vs_exact"] = agreement(outputs["exact"], out)
    results["tiles"] = next(iter(results["runs"].values()))["tiles"]

    log.info("%-9s %9s %9s %9s %9s %9s %6s %6s %6s", "speed", "time s", "min s", "model s", "rest s",
             "peak GB", "tiles", "batch", "pass")
    for speed, row in results["runs"].items():
        log.info("%-9s %9.3f %9.3f %9s %9s %9.2f %6d %6d %6s", speed + ("" if row["speed_ran"] == speed else "*"),
                 row["time_s"], row["min_time_s"], f"{row['model_s']:.3f}" if "model_s" in row else "-",
                 f"{row['rest_s']:.3f}" if "rest_s" in row else "-", row["peak_gpu_gb"], row["tiles"],
                 row["tile_batch"], {True: "yes", False: "no", None: "n/a"}[row["pass"]])
    for name, agree in results["agreement"].items():
        log.info("%s: max |dp| %.4f, mean |dp| %.2e, mask pixels differing %.2e", name,
                 agree["max_abs_probability"], agree["mean_abs_probability"], agree["mask_pixels_differing"])
    log.info("targets: <= %.1f s and <= %.1f GB peak GPU memory (fast, CUDA, %d px)", TARGET_TIME_S,
             TARGET_PEAK_GB, 8192)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
