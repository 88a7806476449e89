"""Segmentation U-Net throughput: UNet Lab's models next to a reference of the same architecture.

For each architecture it times, in the same run and with the same settings, our model and a
reference: a plain eager U-Net / residual U-Net / UNet++ written below (no pad/crop wrapper, no
config), MONAI's AttentionUnet when ``monai`` imports (and its BasicUNetPlusPlus, same widths, as a
second, looser UNet++ reference: LeakyReLU, instance norm, dropout), smp's
Unet/UnetPlusPlus-resnet34 when ``segmentation_models_pytorch`` imports. Figures: images/s of
an inference forward and of one AdamW training step (BCE loss), and ours/reference ratios.

Defaults: 3x512x512, batch 16, bf16 autocast, channels_last, cudnn.benchmark, widths 64..1024.
``--compile`` wraps both sides in ``torch.compile`` (falling back to eager if it fails).
``--quick`` is a tiny CPU run (64x64, batch 2, widths 8..128) that checks the script works.

Our fast inference path (``unet_core/segmentation/fast.py``) is timed in the same run as two
more forward variants: ``ours_fast`` (BatchNorm folded, bf16 weights + autocast, channels_last,
eager, conv + bias (+ residual) + ReLU as one cuDNN kernel where ``conv_relu.fused_kernel_rule``
allows; on CUDA also ``ours_fast_unfused`` without those kernels, unless ``--no-fuse-relu``),
``ours_fast_nosplit`` (``ours_fast`` with the decoder steps' concatenation kept, i.e.
``split_concat=False``: what :mod:`split_concat` adds; skipped with ``--no-split-variant``) and
``ours_compiled`` (the folded bf16 channels_last copy, without the cuDNN kernels, under
``torch.compile`` with ``--compile-mode``; skipped in ``--quick`` and with ``--skip-compiled``). Each of ours / ours_fast / ours_compiled is set
against the architecture's target reference (``TARGETS``: U-Net vs the plain eager U-Net 1.5x,
Attention U-Net vs MONAI AttentionUnet 1.5x, smp Unet vs smp's eager Unet 1.2x, UNet++ vs
MONAI BasicUNetPlusPlus 1.2x); the JSON holds ratios, the target and pass/fail per variant.
``--agree`` checks on the device that each fast/compiled variant's probabilities (sigmoid of
the logits) agree with the eager fp32 forward of the same weights (BatchNorm statistics made
non-trivial, TF32 off for the fp32 side) within ``fast.BF16_PROB_TOLERANCE``, and records the
max abs difference in the JSON.

    python benchmarks/bench_segmentation.py --device cuda --json seg_bench.json
    python benchmarks/bench_segmentation.py --device cuda --agree --only unet attention_unet --json fast.json
    python benchmarks/bench_segmentation.py --quick
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("bench_segmentation")
REPO_ROOT = Path(__file__).resolve().parent.parent


def load_pack():
    """Import the pack under the name ``unet_lab`` (as the tests do)."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from pack_support import load_pack as _load

    return _load()


# ---------------------------------------------------------------- eager references

class _Double(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class PlainUNet(nn.Module):
    """The textbook U-Net, eager, sizes assumed divisible: the speed reference."""

    def __init__(self, widths: list[int], classes: int = 1, block: type[nn.Module] = _Double) -> None:
        super().__init__()
        self.enc = nn.ModuleList([block(3, widths[0])] + [block(a, b) for a, b in pairwise(widths)])
        self.ups = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in pairwise(widths))
        self.dec = nn.ModuleList(block(2 * a, a) for a in widths[:-1])
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, block in zip(reversed(self.ups), reversed(self.dec), strict=True):
            x = block(torch.cat([skips.pop(), up(x)], 1))
        return self.head(x)


class PlainUNetPlusPlus(nn.Module):
    """UNet++ (nested dense skips, transposed-conv upsampling), eager: the speed reference."""

    def __init__(self, widths: list[int], classes: int = 1) -> None:
        super().__init__()
        n = len(widths) - 1
        self.n = n
        self.node = nn.ModuleDict()
        self.up = nn.ModuleDict()
        for i in range(n + 1):
            self.node[f"{i}_0"] = _Double(3 if i == 0 else widths[i - 1], widths[i])
        for j in range(1, n + 1):
            for i in range(n - j + 1):
                self.up[f"{i}_{j}"] = nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                self.node[f"{i}_{j}"] = _Double(widths[i] * (j + 1), widths[i])
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = {(0, 0): self.node["0_0"](x)}
        for i in range(1, self.n + 1):
            grid[(i, 0)] = self.node[f"{i}_0"](F.max_pool2d(grid[(i - 1, 0)], 2))
        for j in range(1, self.n + 1):
            for i in range(self.n - j + 1):
                cat = [grid[(i, k)] for k in range(j)] + [self.up[f"{i}_{j}"](grid[(i + 1, j - 1)])]
                grid[(i, j)] = self.node[f"{i}_{j}"](torch.cat(cat, 1))
        return self.head(grid[(0, self.n)])


def references(widths: list[int], quick: bool) -> dict[str, Callable[[], nn.Module] | None]:
    """Reference constructors per architecture (None when the library is missing)."""
    refs: dict[str, Callable[[], nn.Module] | None] = {
        "unet": lambda: PlainUNet(widths),
        "residual_unet": lambda: PlainUNet(widths, block=_Res),
        "unet_plus_plus": lambda: PlainUNetPlusPlus(widths),
        "attention_unet": None, "smp_unet": None, "smp_unet_plus_plus": None,
    }
    if importlib.util.find_spec("monai") is not None:
        try:
            from monai.networks.nets import AttentionUnet, BasicUNetPlusPlus

            refs["attention_unet"] = lambda: AttentionUnet(spatial_dims=2, in_channels=3, out_channels=1,
                                                           channels=tuple(widths), strides=(2,) * (len(widths) - 1))
            refs["unet_plus_plus_monai"] = lambda: _FirstHead(BasicUNetPlusPlus(
                spatial_dims=2, in_channels=3, out_channels=1, features=tuple(widths) + (widths[0],)))
        except Exception as exc:  # noqa: BLE001 - an optional reference
            log.warning("monai does not import (%s); no MONAI references", exc)
    if importlib.util.find_spec("segmentation_models_pytorch") is not None:
        try:
            import segmentation_models_pytorch as smp

            enc = "resnet18" if quick else "resnet34"
            refs["smp_unet"] = lambda: smp.Unet(enc, encoder_weights=None, classes=1)
            refs["smp_unet_plus_plus"] = lambda: smp.UnetPlusPlus(enc, encoder_weights=None, classes=1)
        except Exception as exc:  # noqa: BLE001
            log.warning("segmentation_models_pytorch does not import (%s); no smp references", exc)
    return refs


class _FirstHead(nn.Module):
    """MONAI's BasicUNetPlusPlus returns a list of heads; keep the last (the full-depth one)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


# ---------------------------------------------------------------- timing

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _prepare(model: nn.Module, device: torch.device, compile_: bool) -> nn.Module:
    model = model.to(device).to(memory_format=torch.channels_last)
    if compile_:
        try:
            return torch.compile(model)
        except Exception as exc:  # noqa: BLE001 - compile is optional
            log.warning("torch.compile failed (%s); eager", exc)
    return model


def measure(build: Callable[[], nn.Module], args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """images/s of an inference forward and of an AdamW training step."""
    torch.manual_seed(0)
    model = build()
    params = sum(p.numel() for p in model.parameters())
    x = torch.rand(args.batch, 3, args.size, args.size, device=device).to(memory_format=torch.channels_last)
    target = (torch.rand(args.batch, 1, args.size, args.size, device=device) > 0.5).float()
    use_amp = args.dtype != "fp32"
    amp_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16

    net = _prepare(model.eval(), device, args.compile)

    def forward() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            net(x)

    try:
        t_fwd = _time(forward, device, args.warmup, args.iters)
    except Exception as exc:  # noqa: BLE001 - a compiled graph may fail at first call
        if not args.compile:
            raise
        log.warning("compiled forward failed (%s); timing eager", exc)
        net = model.to(device)
        t_fwd = _time(forward, device, args.warmup, args.iters)

    model.train()
    train_net = _prepare(model, device, args.compile)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            out = train_net(x)
        loss = F.binary_cross_entropy_with_logits(out.float(), target)
        loss.backward()
        opt.step()

    t_train = _time(step, device, args.warmup, args.iters)
    model = net = train_net = opt = None  # drop them (the closures hold them too) before emptying the cache
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"params_M": params / 1e6, "forward_ms": t_fwd * 1e3, "forward_img_s": args.batch / t_fwd,
            "train_ms": t_train * 1e3, "train_img_s": args.batch / t_train}


# architecture -> (row key of the reference the target is set against, its name, the ratio to reach)
TARGETS: dict[str, tuple[str, str, float]] = {
    "unet": ("reference", "plain eager U-Net", 1.5),
    "attention_unet": ("reference", "MONAI AttentionUnet eager", 1.5),
    "smp_unet": ("reference", "smp Unet eager", 1.2),
    "unet_plus_plus": ("monai", "MONAI BasicUNetPlusPlus eager", 1.2),
}
VARIANTS = ("ours", "ours_fast", "ours_fast_unfused", "ours_fast_nosplit", "ours_compiled")
# variant label -> (prepare_inference speed, fuse_relu, split_concat)
PREPARED: dict[str, tuple[str, bool, bool]] = {"fast": ("fast", True, True), "fast_unfused": ("fast", False, True),
                                               "fast_nosplit": ("fast", True, False),
                                               "compiled": ("compiled", False, True)}


def measure_prepared(build: Callable[[], nn.Module], args: argparse.Namespace, device: torch.device,
                     label: str) -> dict[str, Any]:
    """images/s of our prepared inference forward (``fast.prepare_inference``) on the benchmark batch."""
    from unet_lab.unet_core.segmentation.speed import conv_relu, fast

    torch.manual_seed(0)
    model = build().eval()
    x = torch.rand(args.batch, 3, args.size, args.size, device=device).to(memory_format=torch.channels_last)
    speed, fuse, split = PREPARED[label]
    forward = fast.prepare_inference(model, device, speed, args.compile_mode, fuse_relu=fuse, split_concat=split)
    t0 = time.perf_counter()
    forward(x)  # the first call compiles (or falls back)
    _sync(device)
    first = time.perf_counter() - t0
    t_fwd = _time(lambda: forward(x), device, args.warmup, args.iters)  # noqa: F821 - deleted below, after use
    result = {"forward_ms": t_fwd * 1e3, "forward_img_s": args.batch / t_fwd, "first_call_s": first,
              "speed_run": forward.speed, "weights_dtype": str(forward.dtype).replace("torch.", ""),
              "autocast": str(forward.autocast).replace("torch.", "") if forward.autocast else None,
              "channels_last": forward.channels_last, "conv_relu_fused": forward.fused_layers,
              "split_steps": forward.split_steps,
              "conv_relu_fused_kernel_chosen": sum(sum(m.choice.values()) for m in forward.module.modules()
                                                   if isinstance(m, conv_relu.ConvReLU)),
              "compile_mode": args.compile_mode if speed == "compiled" else None}
    del forward, model
    fast.clear_inference_cache()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _nontrivial_norms(model: nn.Module, seed: int = 0) -> None:
    """BatchNorm statistics and affine parameters away from the identity (so folding is exercised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def agreement(arch: str, build: Callable[[], nn.Module], args: argparse.Namespace, device: torch.device,
              labels: list[str]) -> dict[str, Any]:
    """Max abs difference of probabilities: each prepared variant vs the eager fp32 forward."""
    from unet_lab.unet_core.segmentation.speed import fast

    torch.manual_seed(0)
    model = build()
    _nontrivial_norms(model)
    model = model.eval().to(device)
    x = torch.rand(min(args.batch, 2), 3, args.size, args.size, device=device)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            exact = torch.sigmoid(model(x).float())
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    out: dict[str, Any] = {"tolerance": fast.BF16_PROB_TOLERANCE, "batch": int(x.shape[0])}
    for label in labels:
        speed, fuse, split = PREPARED[label]
        forward = fast.prepare_inference(model, device, speed, args.compile_mode, fuse_relu=fuse,
                                         split_concat=split)
        probs = torch.sigmoid(forward(x))
        diff = float((probs - exact).abs().max())
        clear = (exact - 0.5).abs() > fast.BF16_PROB_TOLERANCE
        flips = int(((probs >= 0.5) != (exact >= 0.5))[clear].sum())
        out[label] = {"max_abs_prob_diff": diff, "mask_flips_outside_band": flips,
                      "speed_run": forward.speed, "pass": diff <= fast.BF16_PROB_TOLERANCE and flips == 0}
        log.info("%-20s   agree %-12s max |dp| %.2e, mask flips away from 0.5: %d -> %s", arch, label, diff, flips,
                 "ok" if out[label]["pass"] else "FAIL")
    del model
    fast.clear_inference_cache()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def target_check(arch: str, row: dict[str, Any]) -> dict[str, Any] | None:
    """Ratios of each of our variants against the architecture's target reference, with pass/fail."""
    if arch not in TARGETS:
        return None
    key, name, target = TARGETS[arch]
    ref = row.get(key)
    if ref is None:
        return {"reference": name, "target": target, "available": False}
    ratios = {v: row[v]["forward_img_s"] / ref["forward_img_s"] for v in VARIANTS if v in row}
    passed = {v: r >= target for v, r in ratios.items()}
    return {"reference": name, "target": target, "available": True, "ratios": ratios, "pass": passed,
            "met": any(passed.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="tiny CPU run to check the script")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    ap.add_argument("--compile", action="store_true", help="torch.compile both sides (eager fallback)")
    ap.add_argument("--only", nargs="*", help="architectures to run (default: all)")
    ap.add_argument("--compile-mode", default="default",
                    choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                    help="torch.compile mode of the ours_compiled variant")
    ap.add_argument("--skip-compiled", action="store_true", help="do not time the ours_compiled variant")
    ap.add_argument("--no-fuse-relu", action="store_true",
                    help="skip ours_fast_unfused (on CUDA: ours_fast without the cuDNN conv + ReLU kernels)")
    ap.add_argument("--no-split-variant", action="store_true",
                    help="skip ours_fast_nosplit (ours_fast with the decoder concatenations kept)")
    ap.add_argument("--agree", action="store_true",
                    help="check the fast/compiled variants against the eager fp32 forward (max |dp| in the JSON)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.quick:
        args.device, args.size, args.batch, args.iters, args.warmup = "cpu", 64, 2, 2, 1
        args.skip_compiled = True  # compiling on this CPU takes minutes; the GPU run times it
        torch.set_num_threads(1)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    load_pack()
    from unet_lab.unet_core.segmentation.registry import ALL_ARCHITECTURES, build_model

    base = 8 if args.quick else 64
    widths = [base * 2 ** i for i in range(5)]
    refs = references(widths, args.quick)
    encoder = "resnet18" if args.quick else "resnet34"
    ours: dict[str, Callable[[], nn.Module]] = {
        arch: (lambda a=arch: build_model(a, encoder_name=encoder, out_channels=1)) if arch.startswith("smp_")
        else (lambda a=arch: build_model(a, base_channels=base, depth=4, out_channels=1))
        for arch in ALL_ARCHITECTURES
    }
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "size": args.size, "batch": args.batch, "dtype": args.dtype,
        "channels_last": True, "compile": args.compile, "widths": widths, "compile_mode": args.compile_mode,
        "architectures": {},
    }
    log.info("%-20s %8s %12s %12s %12s %12s %7s %7s", "architecture", "params", "fwd img/s", "ref fwd",
             "train img/s", "ref train", "fwd x", "train x")
    for arch in ALL_ARCHITECTURES:
        if args.only and arch not in args.only:
            continue
        row: dict[str, Any] = {"ours": measure(ours[arch], args, device)}
        if refs.get(arch) is not None:
            row["reference"] = measure(refs[arch], args, device)
            row["forward_ratio"] = row["ours"]["forward_img_s"] / row["reference"]["forward_img_s"]
            row["train_ratio"] = row["ours"]["train_img_s"] / row["reference"]["train_img_s"]
        extra = refs.get(f"{arch}_monai")
        if extra is not None:  # a second, looser reference (MONAI's variant of the architecture)
            row["monai"] = measure(extra, args, device)
            row["forward_ratio_monai"] = row["ours"]["forward_img_s"] / row["monai"]["forward_img_s"]
            row["train_ratio_monai"] = row["ours"]["train_img_s"] / row["monai"]["train_img_s"]
            log.info("%-20s monai BasicUNetPlusPlus: fwd %.1f img/s, train %.1f img/s", arch,
                     row["monai"]["forward_img_s"], row["monai"]["train_img_s"])
        speeds = (["fast"] + (["fast_unfused"] if device.type == "cuda" and not args.no_fuse_relu else [])
                  + ([] if args.no_split_variant else ["fast_nosplit"])
                  + ([] if args.skip_compiled else ["compiled"]))
        for speed in speeds:
            row[f"ours_{speed}"] = measure_prepared(ours[arch], args, device, speed)
        check = target_check(arch, row)
        if check is not None:
            row["target"] = check
        if args.agree:
            row["agreement"] = agreement(arch, ours[arch], args, device, speeds)
        results["architectures"][arch] = row
        ref = row.get("reference", {})
        log.info("%-20s %7.2fM %12.1f %12s %12.1f %12s %7s %7s", arch, row["ours"]["params_M"],
                 row["ours"]["forward_img_s"], f"{ref['forward_img_s']:.1f}" if ref else "-",
                 row["ours"]["train_img_s"], f"{ref['train_img_s']:.1f}" if ref else "-",
                 f"{row['forward_ratio']:.2f}" if ref else "-", f"{row['train_ratio']:.2f}" if ref else "-")
        for speed in speeds:
            v = row[f"ours_{speed}"]
            log.info("%-20s   ours %-12s fwd %10.1f img/s (ran %s, first call %.1f s, fused conv+relu %d/%d)",
                     arch, speed, v["forward_img_s"], v["speed_run"], v["first_call_s"],
                     v["conv_relu_fused_kernel_chosen"], v["conv_relu_fused"])
        if check is not None and check["available"]:
            log.info("%-20s   target %.1fx %s: %s -> %s", arch, check["target"], check["reference"],
                     ", ".join(f"{k} {r:.2f}x" for k, r in check["ratios"].items()),
                     "met" if check["met"] else "NOT met")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
