"""Volume and U-Net 3+ forward throughput against references of the same widths, in the same run.

Two comparisons, both inference forwards under autocast (bf16 by default) with cudnn.benchmark:

- ``unet3d``: our 3D U-Net (BatchNorm, ReLU, transposed up-sampling, base 32, depth 4: widths
  32..512) on ``--batch`` x 1 x ``--volume``^3 patches, as built (``ours``) and through the
  ``fast`` path (BatchNorm folded, bf16 weights, channels_last_3d: ``ours_fast``), against
  MONAI ``BasicUNet(spatial_dims=3, features=(32, 64, 128, 256, 512, 32))`` (instance norm,
  LeakyReLU; the same encoder widths). Target: ours_fast / MONAI >= 1.3. Skipped without monai.
- ``unet3plus``: our U-Net 3+ (widths 64..1024, CatChannels 64, UpChannels 320) at ``--size`` px,
  ``ours`` and ``ours_fast``, against a plain PyTorch U-Net 3+ written below from the same blocks
  (``nn.Sequential`` conv-BN-ReLU per branch, pooling and bilinear up-sampling inline, no
  pad/crop wrapper, no config). Target: ours_fast / reference >= 1.0.

Figures: milliseconds per forward (median of ``--iters`` after ``--warmup``), items/s, and the
ratios. ``--quick`` is a tiny CPU run (small widths and sizes, fp32) that checks the script works.

    python benchmarks/bench_volume.py --device cuda --json volume_bench.json
    python benchmarks/bench_volume.py --quick
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_segmentation import _time as median_seconds
from torch import nn

from _pack import load_core

log = logging.getLogger("bench_volume")
TARGETS = {"unet3d": 1.3, "unet3plus": 1.0}


def _cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PlainUNet3Plus(nn.Module):
    """U-Net 3+ as the paper draws it, in plain PyTorch: the reference of the same blocks."""

    def __init__(self, filters: list[int], classes: int = 1) -> None:
        super().__init__()
        n = len(filters)
        cat, up = filters[0], filters[0] * n
        self.n = n
        self.enc = nn.ModuleList(nn.Sequential(_cbr(3 if i == 0 else filters[i - 1], f), _cbr(f, f))
                                 for i, f in enumerate(filters))
        self.branch = nn.ModuleList(
            nn.ModuleList(_cbr(filters[i] if i <= j or i == n - 1 else up, cat) for i in range(n)) for j in range(n - 1))
        self.fuse = nn.ModuleList(_cbr(up, up) for _ in range(n - 1))
        self.out = nn.Conv2d(up, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = [self.enc[0](x)]
        for i in range(1, self.n):
            enc.append(self.enc[i](F.max_pool2d(enc[-1], 2)))
        dec = {self.n - 1: enc[-1]}
        for j in range(self.n - 2, -1, -1):
            parts = []
            for i in range(self.n):
                if i < j:
                    src = F.max_pool2d(enc[i], 2 ** (j - i), ceil_mode=True)
                elif i == j:
                    src = enc[j]
                else:
                    src = F.interpolate(dec[i], scale_factor=2 ** (i - j), mode="bilinear")
                parts.append(self.branch[j][i](src))
            dec[j] = self.fuse[j](torch.cat(parts, 1))
        return self.out(dec[0])


def _forward(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dtype: torch.dtype | None,
             device: torch.device) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            if dtype is None:
                return model(x)
            with torch.autocast(device.type, dtype=dtype):
                return model(x)
    return run


def _eager(model: nn.Module, device: torch.device, channels_last: Any) -> nn.Module:
    model = model.to(device).eval()
    return model.to(memory_format=channels_last) if channels_last is not None else model


def compare(name: str, builds: dict[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]], x: torch.Tensor,
            args: argparse.Namespace, device: torch.device, dtype: torch.dtype | None) -> dict[str, Any]:
    row: dict[str, Any] = {"input": list(x.shape)}
    for variant, build in builds.items():
        fn = build()
        ms = 1000.0 * median_seconds(_forward(fn, x, dtype, device), device, args.warmup, args.iters)
        row[variant] = {"ms": round(ms, 3), "items_per_s": round(x.shape[0] * 1000.0 / ms, 2)}
        log.info("%s %s: %.2f ms", name, variant, ms)
        del fn
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ref = next((v for v in ("monai", "reference") if v in row), None)
    if ref is not None:
        for variant in ("ours", "ours_fast"):
            if variant in row:
                row[variant]["ratio_vs_" + ref] = round(row[ref]["ms"] / row[variant]["ms"], 3)
        best = max((row[v]["ratio_vs_" + ref] for v in ("ours", "ours_fast") if v in row), default=0.0)
        row["target"] = TARGETS[name]
        row["passes"] = best >= TARGETS[name]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="tiny CPU run to check the script")
    ap.add_argument("--volume", type=int, default=128, help="3D patch side (voxels)")
    ap.add_argument("--batch", type=int, default=2, help="3D patches per forward")
    ap.add_argument("--size", type=int, default=512, help="U-Net 3+ image side (px)")
    ap.add_argument("--batch2d", type=int, default=8, help="U-Net 3+ images per forward")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    ap.add_argument("--only", nargs="*", choices=sorted(TARGETS), help="comparisons to run (default: both)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.device, args.volume, args.batch, args.size, args.batch2d = "cpu", 32, 1, 64, 1
        args.iters, args.warmup, args.dtype = 2, 1, "fp32"
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.dtype]
    torch.backends.cudnn.benchmark = True
    load_core()
    from unet_lab.unet_core.segmentation.registry import build_model
    from unet_lab.unet_core.segmentation.speed.fast import prepare_inference

    base3d, base2d = (4, 4) if args.quick else (32, 64)
    cl3d = torch.channels_last_3d if device.type == "cuda" else None
    cl2d = torch.channels_last if device.type == "cuda" else None
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                               "dtype": args.dtype, "torch": torch.__version__}
    only = set(args.only or TARGETS)
    if "unet3d" in only:
        x = torch.randn(args.batch, 1, args.volume, args.volume, args.volume, device=device)
        if cl3d is not None:
            x = x.contiguous(memory_format=cl3d)
        ours = build_model("unet3d", in_channels=1, out_channels=2, depth=4, base_channels=base3d).eval()
        builds: dict[str, Callable[[], Any]] = {
            "ours": lambda: _eager(ours, device, cl3d),
            "ours_fast": lambda: prepare_inference(ours, device, "fast"),
        }
        try:
            from monai.networks.nets import BasicUNet

            widths = tuple(base3d * 2 ** i for i in range(5)) + (base3d,)
            builds["monai"] = lambda: _eager(BasicUNet(spatial_dims=3, in_channels=1, out_channels=2,
                                                       features=widths), device, cl3d)
        except ImportError:
            log.warning("monai is not installed: the unet3d comparison has no reference")
        results["unet3d"] = compare("unet3d", builds, x, args, device, dtype)
    if "unet3plus" in only:
        x = torch.randn(args.batch2d, 3, args.size, args.size, device=device)
        if cl2d is not None:
            x = x.contiguous(memory_format=cl2d)
        ours2 = build_model("unet3plus", in_channels=3, out_channels=1, depth=4, base_channels=base2d).eval()
        filters = [base2d * 2 ** i for i in range(5)]
        results["unet3plus"] = compare("unet3plus", {
            "ours": lambda: _eager(ours2, device, cl2d),
            "ours_fast": lambda: prepare_inference(ours2, device, "fast"),
            "reference": lambda: _eager(PlainUNet3Plus(filters), device, cl2d),
        }, x, args, device, dtype)
    text = json.dumps(results, indent=2)
    log.info("%s", text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
