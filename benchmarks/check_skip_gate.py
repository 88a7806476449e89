"""The fused skip gate on the GPU against the eager gate, case by case (a check, not a timing).

For every case (SD1 / SDXL block shapes and small odd ones; fp16, bf16, fp32; NCHW, channels-last
and mixed layouts) it runs a fresh ``FusedSkipGate`` and checks:

- ``m * hsp`` against the eager gate (``energy_alpha`` + ``applied_map``): within 4 units in the
  last place of the dtype at the largest ``|hsp|`` (the eager path rounds its maps to the dtype
  between steps; the fused one computes in fp32 and rounds once), and never tighter than 16 units
  of fp32: in fp32 nothing is rounded between steps, and what is left is the order of the sums
  over channels and pixels (tiles against torch's reductions) and the GPU's exp and rsqrt, a few
  units each;
- the concatenation (``concat=True``): its first channels are ``h`` bitwise, the others match
  ``m * hsp`` of the plain call to within one unit in the last place (the two are compiled for
  different output strides), and its strides are those of ``torch.cat([h, hsp], 1)``;
- later calls of the same case give the first call's output bitwise (the kernel is deterministic:
  no atomics, a fixed order of sums).

    python benchmarks/check_skip_gate.py --device cuda --json check.json
    python benchmarks/check_skip_gate.py --device cpu      # a few cases in Triton's CPU interpreter

Exit status 1 if any case fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1:][:1] == ["cpu"]:
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports Triton

import torch  # noqa: E402

from _pack import load_core  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

log = logging.getLogger("check_skip_gate")

# (batch, skip channels, gate channels, height, width): SD1 / SDXL decoder blocks and small odd shapes
SHAPES = [(2, 1280, 1280, 8, 8), (2, 640, 1280, 16, 16), (2, 320, 640, 32, 32), (2, 320, 640, 64, 64),
          (2, 320, 320, 64, 64), (2, 320, 640, 128, 128), (4, 640, 1280, 32, 32), (1, 8, 24, 5, 7)]
QUICK_SHAPES = [(2, 24, 40, 9, 7), (1, 8, 24, 5, 7)]
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
LAYOUTS = ("nchw", "channels_last", "mixed")
ULP = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7, torch.float32: 2.0**-23}


def _inputs(shape, dtype, layout, device, seed):
    batch, cx, cg, height, width = shape
    gen = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.2, 3.0, height * width).view(1, 1, height, width)
    hsp = (torch.randn(batch, cx, height, width, generator=gen) * ramp + 1.0).to(device, dtype)
    h = torch.randn(batch, cg, height, width, generator=gen).to(device, dtype)
    if layout == "channels_last":
        hsp, h = hsp.contiguous(memory_format=torch.channels_last), h.contiguous(memory_format=torch.channels_last)
    elif layout == "mixed":
        hsp = hsp.contiguous(memory_format=torch.channels_last)
    return h, hsp


def check_case(shape, dtype, layout, device, seed: int = 0) -> dict:
    """One case's checks (module docstring) as a dict; ``ok`` is their conjunction."""
    from unet_lab.unet_core.gates.fused_gate import FusedSkipGate
    from unet_lab.unet_core.gates.skip_gate import applied_map, energy_alpha

    h, hsp = _inputs(shape, dtype, layout, device, seed)
    rows = (0.45,) * shape[0]
    gate = FusedSkipGate(1.0, 1e-5)
    with torch.inference_mode():
        plain = gate(h, hsp, rows)
        joined = gate(h, hsp, rows, concat=True)
        if plain is None or joined is None:
            return {"ok": False, "why": "the fused gate refused the case or its launch failed"}
        plain, joined = plain[0], joined[0]
        again = [gate(h, hsp, rows, concat=concat)[0] for concat in (False, True, False, True)]
        eager = hsp * applied_map(energy_alpha(h, hsp), 0.45, 0.0)
        scale = max(1.0, hsp.float().abs().max().item())
        eager_diff = (plain.float() - eager.float()).abs().max().item()
        split = h.shape[1]
        joined_diff = (joined[:, split:].float() - plain.float()).abs().max().item()
        result = {
            "eager_max_abs_diff": eager_diff,
            "eager_tolerance": max(4 * ULP[dtype], 16 * ULP[torch.float32]) * scale,
            "joined_h_bitwise": bool(torch.equal(joined[:, :split], h)),
            "joined_gated_max_abs_diff": joined_diff,
            "joined_strides_as_cat": joined.stride() == torch.cat([h, hsp], 1).stride(),
            "repeated_calls_bitwise": all(torch.equal(a, plain if i % 2 == 0 else joined)
                                          for i, a in enumerate(again)),
        }
    result["ok"] = (eager_diff <= result["eager_tolerance"] and result["joined_h_bitwise"]
                    and joined_diff <= ULP[dtype] * scale and result["joined_strides_as_cat"]
                    and result["repeated_calls_bitwise"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--json", type=Path, default=None, help="write every case's result here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    load_core()
    device = torch.device(args.device)
    shapes = SHAPES if device.type == "cuda" else QUICK_SHAPES
    results = []
    for name in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        for shape in shapes:
            for layout in LAYOUTS:
                result = {"shape": list(shape), "dtype": name, "layout": layout,
                          **check_case(shape, DTYPES[name], layout, device)}
                results.append(result)
                log.info("%s %-22s %-8s %-13s %s", "ok  " if result["ok"] else "FAIL", shape, name, layout,
                         {k: v for k, v in result.items() if k not in ("shape", "dtype", "layout", "ok")})
    failed = sum(not r["ok"] for r in results)
    log.info("%d of %d cases failed", failed, len(results))
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "torch": torch.__version__, "cases": results},
                                        indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
