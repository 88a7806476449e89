"""Pixel diffusion U-Nets: one denoising step, ours against diffusers' UNet2DModel, and a 50-step DDIM sample.

Cases (fp16 on CUDA by default, bf16 with ``--dtype bf16``):

* ``cifar10-32``: google/ddpm-cifar10-32's config at batch 256, 32 x 32;
* ``celebahq-256``: the google/ddpm 256 px layout (celebahq, church, bedroom, cat) at batch 8;
* ``guided-256``: guided-diffusion's 256 x 256 unconditional config at batch 8 (ours only: diffusers
  has no model of that layout), beside them.

Both models hold the same random weights (diffusers' state dict renamed by our key map). Each
round runs the variants in a fresh random order (``_rounds``); the figure is the median step and
the median of the paired ratios to diffusers eager. Variants: ``diffusers`` (eager), ``ours``
(eager: its GroupNorms fused on CUDA, ``norm_act``), ``ours_eager_norm`` (the same with PyTorch's
GroupNorm and SiLU), ``ours_graph`` (the whole step captured in one CUDA graph, replayed). ``--ddim`` adds a
50-step DDIM sample end to end (ours ``sampling.sample`` against diffusers' ``DDIMPipeline``,
same seed) for cifar10-32 and celebahq-256. Goal: ours at most 0.9x diffusers' step time.

    python benchmarks/bench_pixel_diffusion.py --ddim --json pixel.json          # GPU
    python benchmarks/bench_pixel_diffusion.py --device cpu --tiny --ddim        # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from _pack import load_core  # benchmarks/ is on sys.path when a script runs
from _rounds import round_orders

log = logging.getLogger("bench_pixel_diffusion")
CIFAR10 = {"block_out_channels": [128, 256, 256, 256], "attention_head_dim": None, "downsample_padding": 0,
           "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
           "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "flip_sin_to_cos": False,
           "freq_shift": 1, "norm_eps": 1e-6, "layers_per_block": 2, "sample_size": 32}
CELEBAHQ = {**CIFAR10, "block_out_channels": [128, 128, 256, 256, 512, 512], "sample_size": 256,
            "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _graphed(fn, args: tuple, device: torch.device):
    """``fn(*args)`` captured in a CUDA graph: a callable replaying it on the same input buffers."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(*args)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*args)
    return lambda: (graph.replay(), out)[1]


def _with(context, fn, *args):
    with context:
        return fn(*args)


def _pair(data: dict, tiny: bool, size: int, device: torch.device, dtype: torch.dtype):
    import diffusers

    core = "unet_lab.unet_core.pixel_diffusion"
    infer = __import__("unet_lab.unet_core.checkpoints.pixel_infer", fromlist=["x"])
    keymap = __import__(f"{core}.keymap", fromlist=["x"])
    loading = __import__(f"{core}.loading", fromlist=["x"])
    data = {**data, "sample_size": size}
    if tiny:
        data = {**data, "block_out_channels": [c // 8 for c in data["block_out_channels"]], "norm_num_groups": 8}
    torch.manual_seed(0)
    ref = diffusers.UNet2DModel(**data).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.02)
    config = infer.config_from_diffusers_json(data)
    ours = loading.build(config, keymap.diffusers_to_canonical(ref.state_dict(), config), dtype=dtype)
    return ref.to(device, dtype), ours.to(device), config


def _time(fns: dict, device: torch.device, rounds: int, warmup: int) -> dict[str, list[float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for order in round_orders(list(fns), rounds):
        for name in order:
            _sync(device)
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def _summary(times: dict[str, list[float]], reference: str | None) -> dict[str, dict[str, float]]:
    out = {}
    for name, ts in times.items():
        row = {"median_ms": statistics.median(ts), "min_ms": min(ts)}
        if reference and reference in times:
            row["ratio_to_" + reference] = statistics.median(a / b for a, b in zip(ts, times[reference], strict=True))
        out[name] = row
    return out


@torch.no_grad()
def step_case(name: str, batch: int, size: int, args, device, dtype) -> dict:
    load_core()
    if name == "guided-256":
        cfg_mod = __import__("unet_lab.unet_core.pixel_unet_config", fromlist=["x"])
        model_mod = __import__("unet_lab.unet_core.pixel_diffusion.model", fromlist=["x"])
        import dataclasses

        config = cfg_mod.GUIDED_256_UNCOND
        if args.tiny:
            config = dataclasses.replace(config, block_channels=tuple(c // 8 for c in config.block_channels),
                                         time_channels=32, time_embed_dim=128)
        torch.manual_seed(0)
        ours = model_mod.PixelUNet(config).eval().to(device, dtype)
        ref = None
    else:
        ref, ours, config = _pair(CIFAR10 if name == "cifar10-32" else CELEBAHQ, args.tiny, size, device, dtype)
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    t = torch.randint(0, 1000, (batch,), device=device)
    norm_act = __import__("unet_lab.unet_core.pixel_diffusion.norm_act", fromlist=["x"])
    fns = {"ours": lambda: ours(x, t)}
    if device.type == "cuda":
        fns["ours_eager_norm"] = lambda: _with(norm_act.eager_only(), ours, x, t)
    if ref is not None:
        fns["diffusers"] = lambda: ref(x, t).sample
        err = (ours(x, t).float() - ref(x, t).sample.float()).abs().max().item()
    else:
        err = None
    fused_err = None
    if "ours_eager_norm" in fns:
        fused_err = (ours(x, t).float() - fns["ours_eager_norm"]().float()).abs().max().item()
    if device.type == "cuda":
        fns["ours_graph"] = _graphed(lambda: ours(x, t), (), device)
    times = _time(fns, device, args.rounds, args.warmup)
    params = sum(p.numel() for p in ours.parameters()) / 1e6
    result = {"case": name, "batch": batch, "size": size, "params_M": params,
              "max_abs_diff_vs_diffusers": err,
              "max_abs_diff_fused_norm_vs_eager": fused_err, "variants": _summary(times, "diffusers" if ref is not None else None)}
    log.info("%s", json.dumps(result))
    return result


@torch.no_grad()
def ddim_case(name: str, batch: int, size: int, args, device, dtype) -> dict:
    import diffusers

    load_core()
    sampling = __import__("unet_lab.unet_core.pixel_diffusion.sampling", fromlist=["x"])
    schedule = __import__("unet_lab.unet_core.pixel_diffusion.schedule", fromlist=["x"])
    ref, ours, config = _pair(CIFAR10 if name == "cifar10-32" else CELEBAHQ, args.tiny, size, device, dtype)
    pipe = diffusers.DDIMPipeline(unet=ref, scheduler=diffusers.DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    sched = schedule.NoiseSchedule.for_config(config)
    steps = args.ddim_steps

    def run_ours():
        return sampling.sample(lambda x, t, y: ours(x.to(dtype), t, y), sched, (batch, 3, size, size),
                               torch.Generator().manual_seed(0), sampling.SampleSettings("ddim", steps), device=device)

    def run_ref():
        return pipe(batch_size=batch, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                     output_type="np").images

    a = (run_ours() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    b = run_ref()
    times = _time({"ours": run_ours, "diffusers": run_ref}, device, max(2, args.rounds // 5), 1)
    result = {"case": f"ddim{steps}-{name}", "batch": batch, "size": size,
              "max_abs_diff_images": float(abs(a - b).max()),
              "variants": _summary(times, "diffusers")}
    log.info("%s", json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="fp16 (default on cuda), bf16 or fp32 (default on cpu)")
    parser.add_argument("--tiny", action="store_true", help="widths / 8, batch 2 (CPU smoke run)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--ddim", action="store_true", help="also a DDIM sample end to end")
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    args.rounds = args.rounds or (3 if args.tiny else 30)
    args.warmup = args.warmup or (1 if args.tiny else 5)
    if args.tiny:
        args.ddim_steps = min(args.ddim_steps, 5)
    big = 64 if args.tiny else 256
    cases = [("cifar10-32", 2 if args.tiny else 256, 32), ("celebahq-256", 2 if args.tiny else 8, big),
             ("guided-256", 2 if args.tiny else 8, big)]
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "dtype": str(dtype), "torch": torch.__version__, "steps": [], "ddim": []}
    for name, batch, size in cases:
        results["steps"].append(step_case(name, batch, size, args, device, dtype))
    if args.ddim:
        for name, batch, size in cases[:2]:
            results["ddim"].append(ddim_case(name, batch, size, args, device, dtype))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
