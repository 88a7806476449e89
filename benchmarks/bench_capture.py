"""Accelerate UNet on the GPU: eager, captured, captured + compile and core compile, side by side.

Cases (fp16, random weights made on the device, ``_capture_setup.py``): SD1.5 at 64x64 latents
batch 1 (cond only) and batch 2 (cond + uncond), SD1.5 batch 2 with LoRA (rank 8 on every
attention projection) and the skip gate active, SDXL at 128x128 batch 2, and SDXL-Turbo's
one-step sample at 512 px (64x64 latents, batch 1, cond only: cfg 1) timed whole, its Euler
step around the model call included (``one_step_sample``). Hosts: our UNet in the
standalone patcher and, with ``--comfyui PATH``, ComfyUI's own UNet called through ComfyUI's
wrapper executor (see ``_capture_setup``). Variants per case and host:

- ``eager``: the forward as it is;
- ``captured``: through the accelerator (CUDA graphs);
- ``captured+compile``: the accelerator with ``compile`` (inductor under the capture);
- ``core compile``: ``torch.compile`` of the whole diffusion model (inductor, static shapes), what
  core TorchCompileModel does.

Compiling takes minutes, so the compile variants run only for ``--compile-cases``. Per variant:
wall time per step (``steps`` calls back to back, one sync at the end, as a sampler runs them;
median over ``rounds`` rounds, variants in a random order each round, ``_rounds.py``); for eager
the GPU kernel time per step (torch.profiler: the sum of kernel durations, free of host time);
whether the accelerated output equals eager bitwise (compile variants: the max abs difference);
capture time (warm-up included), first-call compile time and pool growth per graph.

    python benchmarks/bench_capture.py --device cuda --comfyui ~/ComfyUI --json capture.json
    python benchmarks/bench_capture.py --device cpu       # smoke run: tiny configs, eager fallback
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import sys
import time

import torch

from _capture_setup import ComfyHost, OurHost, Scenario, accelerator, bitwise_equal, configs, make_inputs, start
from _rounds import round_orders

log = logging.getLogger("bench_capture")

# name -> (family, batch, latent size, scenario)
CASES = {
    "sd1_b1": ("sd1", 1, 64, Scenario(cond_or_uncond=[0])),
    "sd1_b2": ("sd1", 2, 64, Scenario()),
    "sd1_b2_lora_gate": ("sd1", 2, 64, Scenario(lora=1.0, gate=0.5)),
    "sdxl_b2": ("sdxl", 2, 128, Scenario()),
    "sdxl_turbo_512_one_step": ("sdxl", 1, 64, Scenario(cond_or_uncond=[0])),
}
ONE_STEP_CASES = {"sdxl_turbo_512_one_step"}  # timed as a whole one-step sample (sampler included)
TURBO_SIGMA = 14.6146  # the noise level SDTurboScheduler starts a one-step sample at


def one_step_sample(model_call):
    """A whole one-step epsilon-prediction Euler sample around ``model_call``, as a Turbo sampler
    runs it: scale the noise to sigma, scale the model input by 1/sqrt(sigma^2 + 1), predict eps and
    return the denoised latent ``x - sigma * eps`` (what one Euler step to sigma 0 gives)."""

    def sample(noise, t, context, y):
        x = noise * TURBO_SIGMA
        eps = model_call(x * (1.0 / (TURBO_SIGMA ** 2 + 1) ** 0.5), t, context, y)
        return x - eps * TURBO_SIGMA

    return sample


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_kernel_ms(fn, inputs, device, steps: int = 3) -> float | None:
    """Sum of the GPU kernels' durations per step (torch.profiler)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn(*inputs)
        _sync(device)
    total = sum(getattr(e, "device_time_total", 0) or 0 for e in prof.events()
                if e.device_type == torch.autograd.DeviceType.CUDA)
    return round(total / steps / 1e3, 3)


def time_variants(fns: dict, inputs, device, rounds: int, steps: int) -> dict[str, float]:
    """Median wall time per step (ms) of each variant, ``steps`` calls per round, random order."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    gc.collect()
    gc.disable()
    try:
        for order in round_orders(list(fns.items()), rounds):
            for name, fn in order:
                _sync(device)
                start = time.perf_counter()
                for _ in range(steps):
                    fn(*inputs)
                _sync(device)
                times[name].append((time.perf_counter() - start) / steps)
    finally:
        gc.enable()
    return {name: round(statistics.median(v) * 1e3, 3) for name, v in times.items()}


def bench_case(host, case: str, scenario: Scenario, batch: int, size: int, device, dtype, compile_on: bool,
               rounds: int, steps: int) -> dict:
    inputs = make_inputs(host.config, batch, size, device, dtype, seed=0)
    other = make_inputs(host.config, batch, size, device, dtype, seed=1)
    wrap = one_step_sample if case in ONE_STEP_CASES else (lambda fn: fn)
    variants = {"eager": (wrap(host.runner(scenario)), None)}
    accel = accelerator()
    variants["captured"] = (wrap(host.runner(scenario, accel)), accel)
    if compile_on:
        compiled_accel = accelerator(compile=True)
        variants["captured+compile"] = (wrap(host.runner(scenario, compiled_accel)), compiled_accel)
        variants["core compile"] = (wrap(host.compiled_runner(scenario)), None)
    result: dict = {"case": case, "host": host.name, "batch": batch, "latent": size, "lora": scenario.lora,
                    "gate": scenario.gate, "variants": {}}
    with torch.inference_mode():
        reference = {}
        for name, (fn, acc) in variants.items():  # first calls: capture / compile, timed
            _sync(device)
            start = time.perf_counter()
            out = fn(*inputs)
            _sync(device)
            first = time.perf_counter() - start
            fn(*inputs)
            entry: dict = {"first_call_s": round(first, 3)}
            if name == "eager":
                reference = {"a": out, "b": fn(*other)}
            else:
                again = fn(*other)
                if "compile" in name:
                    entry["max_abs_diff_vs_eager"] = float(max((out.float() - reference["a"].float()).abs().max(),
                                                               (again.float() - reference["b"].float()).abs().max()))
                else:
                    entry["bitwise_equal_eager"] = bitwise_equal(out, reference["a"]) and \
                        bitwise_equal(again, reference["b"])
            if acc is not None:
                stats = acc.stats
                entry.update(captures=stats.captures, eager_reasons=stats.eager_reasons, failures=stats.failures,
                             capture_s=[round(s, 4) for s in stats.capture_seconds],
                             compile_s=[round(s, 2) for s in stats.compile_seconds if s],
                             pool_mib_per_graph=[round(b / 2**20, 1) for b in stats.pool_bytes])
            result["variants"][name] = entry
        result["gpu_kernel_ms_eager"] = gpu_kernel_ms(variants["eager"][0], inputs, device)
        walls = time_variants({n: f for n, (f, _) in variants.items()}, inputs, device, rounds, steps)
    for name, wall in walls.items():
        result["variants"][name]["wall_ms"] = wall
    eager, gpu = walls["eager"], result["gpu_kernel_ms_eager"]
    for entry in result["variants"].values():
        entry["speedup_vs_eager"] = round(eager / entry["wall_ms"], 3)
        if gpu:
            entry["wall_over_eager_gpu_kernel_time"] = round(entry["wall_ms"] / gpu, 3)
    log.info("%-18s %-8s %s", case, host.name, "  ".join(
        f"{n} {e['wall_ms']:.2f} ms (x{e['speedup_vs_eager']:.2f})" for n, e in result["variants"].items())
        + (f"  | eager GPU kernels {gpu:.2f} ms" if gpu else ""))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--comfyui", default=None, metavar="PATH", help="a ComfyUI checkout: time its UNet too")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--compile-cases", default="sd1_b2",
                        help="cases that also run the compile variants ('' for none, 'all')")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10, help="calls per round and variant")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    run = start(args)
    device, on_gpu, dtype = run.device, run.on_gpu, run.dtype
    rounds, steps = (args.rounds, args.steps) if on_gpu else (1, 1)
    compile_cases = set(CASES) if args.compile_cases == "all" else set(filter(None, args.compile_cases.split(",")))
    if not on_gpu:
        compile_cases = set()
    report: dict = {**run.header, "cases": []}
    hosts: dict = {}
    for case in args.cases.split(","):
        family, batch, size, scenario = CASES[case]
        if not on_gpu:
            size = 8
        if family not in hosts:
            hosts.clear()
            if on_gpu:
                torch.cuda.empty_cache()
            ours = OurHost(configs(not on_gpu)[family], family, device, dtype)
            hosts[family] = [ours] + ([ComfyHost(args.comfyui, ours, device, dtype)] if args.comfyui else [])
        for host in hosts[family]:
            report["cases"].append(bench_case(host, case, scenario, batch, size, device, dtype,
                                              case in compile_cases, rounds, steps))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
