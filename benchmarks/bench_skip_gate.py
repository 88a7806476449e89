"""Per-step overhead of the skip attention gate on full-size SD1 and SDXL UNets.

Our UNet (``unet_core.diffusion.unet.UNetModel``) with random weights, fp16 on CUDA, batch 2
(SD1 64x64 latents, 77x768 context; SDXL 128x128, 77x2048, ADM 2816), inference mode. Each
variant runs the same inputs; variants alternate step by step (rounds of one step each) so
clock drift and interference from other processes hit all alike, in a random order each round
(``_rounds.py``: a fixed order lets a variant's place in the round pass for its cost); the GC is
off while timing; every step is timed between two ``torch.cuda.synchronize()`` calls. The
overhead figure is paired: the median over rounds of (variant step / unpatched step of the same
round) - 1; the ratio of the medians and of the 10th percentiles are printed beside it. The GPU
kernel time per step (torch.profiler) is given too: it is free of host jitter.

"gate all levels": the gate writes each block's concatenation, which our UNet takes from it
(``diffusion/skip_concat.py``); "gate all levels, UNet concatenates": the same gate called as
ComfyUI's UNet calls it, without that offer, so the UNet copies ``h`` and ``m * hsp`` itself.

``--comfyui PATH`` times ComfyUI's own UNet (``comfy/ldm/modules/diffusionmodules/openaimodel.py``
of the ComfyUI checkout at PATH, with ComfyUI's ``disable_weight_init`` layers, as ComfyUI runs an
fp16 UNet) in place of ours, with the same weights: what a ComfyUI user's sampling step pays. That
UNet never takes the concatenation from a patch, so there "gate all levels" is the ComfyUI way too.
Nothing is installed; the checkout's own dependencies (einops, psutil, ...) must be importable.

    python benchmarks/bench_skip_gate.py --device cuda --json results.json
    python benchmarks/bench_skip_gate.py --device cuda --comfyui ~/ComfyUI --json comfyui.json
    python benchmarks/bench_skip_gate.py --quick            # CPU smoke run on reduced configs
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

from _pack import load_core  # benchmarks/ is on sys.path when a script runs
from _rounds import round_orders

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench_skip_gate")


def _configs(quick: bool):
    from unet_lab.unet_core.unet_config import SD1_CONFIG, SDXL_CONFIG, UNetConfig

    if not quick:
        return {"sd1": (SD1_CONFIG, 64), "sdxl": (SDXL_CONFIG, 128)}
    sd1 = UNetConfig(block_out_channels=(32, 64, 64, 64), layers_per_block=2, transformer_layers_per_block=(1, 1, 1, 0),
                     num_attention_heads=(2, 2, 2, 2), cross_attention_dim=64, norm_num_groups=32)
    sdxl = UNetConfig(block_out_channels=(32, 64, 64), layers_per_block=2, transformer_layers_per_block=(0, 1, 2),
                      num_attention_heads=(2, 2, 2), cross_attention_dim=64, use_linear_projection=True,
                      norm_num_groups=32, addition_embed_type="text_time", addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=64)
    return {"sd1": (sd1, 32), "sdxl": (sdxl, 32)}


def _without_concatenation_offer(patch):
    """``patch`` as ComfyUI's UNet calls it: with no offer to take the concatenation from it
    (``diffusion/skip_concat.py``), so the gate returns ``m * hsp`` and the UNet concatenates.
    The patch sees a dict with the two keys it reads, copied from the UNet's on every call."""
    seen = {}

    def call(h, hsp, options):
        seen["block"], seen["cond_or_uncond"] = options["block"], options["cond_or_uncond"]
        return patch(h, hsp, seen)

    return call


def comfy_unet_kwargs(config) -> dict:
    """The arguments of ComfyUI's ``UNetModel`` for one of our configs (LDM names: one transformer
    depth per input block and per output block, one head count or one head width for all levels)."""
    base = config.block_out_channels[0]
    blocks = config.layers_per_block
    depths = config.transformer_layers_per_block
    kwargs = {"in_channels": config.in_channels, "out_channels": config.out_channels, "model_channels": base,
              "channel_mult": [c // base for c in config.block_out_channels],
              "num_res_blocks": [blocks] * config.num_levels,
              "transformer_depth": [d for d in depths for _ in range(blocks)],
              "transformer_depth_output": [d for d in depths for _ in range(blocks + 1)],
              "transformer_depth_middle": config.mid_transformer_layers, "context_dim": config.cross_attention_dim,
              "use_linear_in_transformer": config.use_linear_projection, "use_spatial_transformer": True,
              "legacy": False, "norm_num_groups": config.norm_num_groups}
    heads = set(config.num_attention_heads)
    widths = {c // n for c, n in zip(config.block_out_channels, config.num_attention_heads, strict=True)}
    if len(heads) == 1:
        kwargs["num_heads"] = heads.pop()
    elif len(widths) == 1:
        kwargs["num_head_channels"] = widths.pop()
    else:
        raise ValueError("ComfyUI's UNetModel takes one head count or one head width for all levels")
    if config.projection_class_embeddings_input_dim:
        kwargs.update(num_classes="sequential", adm_in_channels=config.projection_class_embeddings_input_dim)
    return kwargs


def _comfy_unet(checkout: str, config, device, dtype, state_dict):
    """ComfyUI's UNet from the checkout at ``checkout`` with our model's weights (the same LDM keys)."""
    root = Path(checkout).expanduser().resolve()
    if not (root / "comfy" / "ldm" / "modules" / "diffusionmodules" / "openaimodel.py").is_file():
        raise SystemExit(f"--comfyui {checkout}: not a ComfyUI checkout (no comfy/ldm/modules/diffusionmodules/openaimodel.py)")
    sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = device.type == "cpu"  # read when comfy.model_management is first imported
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel as ComfyUNet

    kwargs = comfy_unet_kwargs(config)
    if kwargs.pop("norm_num_groups") != 32:
        raise ValueError("ComfyUI's UNetModel has 32 norm groups")
    # image_size is required but unused by the model; ComfyUI's model detection passes 32
    model = ComfyUNet(image_size=32, **kwargs, dtype=dtype, device=device, operations=comfy.ops.disable_weight_init)
    model.load_state_dict(state_dict, strict=True)  # strict: the layouts must agree key for key and in shape
    return model.eval()


def _variants(config, offers_concatenation: bool = True):
    """name -> transformer_options (None: the unpatched reference). ``offers_concatenation``: the
    UNet offers to take the concatenation from a patch (ours does; ComfyUI's UNet makes no offer,
    so there the variant that withholds it would time the same gate again)."""
    from unet_lab.unet_core.gates.skip_gate import GateMapRecorder, SkipGatePatch, build_settings

    def opts(patch, cond_or_uncond=(1, 0)):
        return {"patches": {"output_block_patch": [patch]}, "cond_or_uncond": list(cond_or_uncond)}

    both = build_settings(config, 0.5, floor=0.1)
    cond = build_settings(config, 0.5, floor=0.1, apply_to="cond")
    variants = {
        "unpatched": {"cond_or_uncond": [1, 0]},
        "gate all levels": opts(SkipGatePatch(both)),
        "gate all levels, UNet concatenates": opts(_without_concatenation_offer(SkipGatePatch(both))),
        "gate all levels, eager": opts(SkipGatePatch(both, fused=False)),
        "gate + record maps": opts(SkipGatePatch(both, recorder=GateMapRecorder(config))),
        "gate cond only": opts(SkipGatePatch(cond)),
        "strength 0": opts(SkipGatePatch(build_settings(config, 0.0))),
    }
    if not offers_concatenation:
        del variants["gate all levels, UNet concatenates"]
    return variants


def _inputs(config, size: int, device, dtype, batch: int = 2):
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, config.in_channels, size, size, generator=gen).to(device, dtype)
    t = torch.tensor([500.0] * batch, device=device)
    context = torch.randn(batch, 77, config.cross_attention_dim, generator=gen).to(device, dtype)
    y = None
    if config.projection_class_embeddings_input_dim:
        y = torch.randn(batch, config.projection_class_embeddings_input_dim, generator=gen).to(device, dtype)
    return x, t, context, y


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _kernel_profile(model, variants: dict, inputs: tuple, device, steps: int = 5) -> dict:
    """GPU kernel time and kernel count per step (torch.profiler), free of CPU-side jitter."""
    from torch.profiler import ProfilerActivity, profile

    x, t, context, y = inputs
    result = {}
    base = None
    with torch.inference_mode():
        for name, options in variants.items():
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(steps):
                    model(x, t, context, y, transformer_options=options)
                _sync(device)
            events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            gpu_us = sum(e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
                         for e in events) / steps
            count = len(events) / steps
            if base is None:
                base = (gpu_us, count)
            result[name] = {"gpu_kernel_ms": round(gpu_us / 1e3, 3), "kernels_per_step": round(count, 1),
                            "gpu_overhead_pct": round((gpu_us / base[0] - 1.0) * 100.0, 2)}
    return result


def _median_by_place(samples: list[float], places: list[int]) -> list[float | None]:
    """Median step time (ms) at each place in the round (None where no step ran there)."""
    by_place: dict[int, list[float]] = {}
    for sample, place in zip(samples, places, strict=True):
        by_place.setdefault(place, []).append(sample)
    return [round(statistics.median(by_place[p]) * 1e3, 3) if p in by_place else None
            for p in range(max(places, default=-1) + 1)]


def bench_family(family: str, config, size: int, device, dtype, warmup: int, rounds: int, steps: int,
                 comfyui: str | None = None) -> dict:
    from unet_lab.unet_core.diffusion.unet import UNetModel

    torch.manual_seed(0)
    with device:  # build the weights on the device (an SDXL UNet is 10 GB in fp32)
        model = UNetModel(config)
    model = model.to(dtype=dtype).eval()
    model.dtype = dtype
    x, t, context, y = _inputs(config, size, device, dtype)
    variants = _variants(config, offers_concatenation=not comfyui)
    host = {"unet": "ours"}
    if comfyui:  # the same weights in both UNets: outputs agree up to kernel differences, gated or not
        compared = ("unpatched", "gate all levels, eager")
        with torch.inference_mode():
            ours = [model(x, t, context, y, transformer_options=dict(variants[n])).float() for n in compared]
            model = _comfy_unet(comfyui, config, device, dtype, model.state_dict())
            theirs = [model(x, t, context, y, transformer_options=dict(variants[n])).float() for n in compared]
        host = {"unet": "comfyui", "unpatched_output_max_abs": float(ours[0].abs().max()),
                **{f"comfyui_vs_ours_{n.replace(' ', '_').replace(',', '')}_max_abs_diff": float((a - b).abs().max())
                   for n, a, b in zip(compared, theirs, ours, strict=True)}}
        del ours, theirs
    times: dict[str, list[float]] = {name: [] for name in variants}
    places: dict[str, list[int]] = {name: [] for name in variants}  # each step's place in its round
    outputs = {}
    with torch.inference_mode():
        for name, options in variants.items():  # warm-up (and one output per variant)
            for _ in range(warmup):
                out = model(x, t, context, y, transformer_options=options)
            outputs[name] = out.float()
        _sync(device)
        gc.collect()
        gc.disable()
        try:
            for order in round_orders(list(variants.items()), rounds):  # a random order each round
                for place, (name, options) in enumerate(order):
                    for _ in range(steps):
                        _sync(device)
                        start = time.perf_counter()
                        model(x, t, context, y, transformer_options=options)
                        _sync(device)
                        times[name].append(time.perf_counter() - start)
                        places[name].append(place)
        finally:
            gc.enable()
    kernels = _kernel_profile(model, variants, (x, t, context, y), device) if device.type == "cuda" else {}
    ref = outputs["unpatched"]
    base = statistics.median(times["unpatched"])
    base_p10 = sorted(times["unpatched"])[len(times["unpatched"]) // 10]
    fused_patch = variants["gate all levels"]["patches"]["output_block_patch"][0]
    fused, eager = outputs["gate all levels"], outputs["gate all levels, eager"]
    unjoined = outputs.get("gate all levels, UNet concatenates", fused)
    result = {"family": family, **host, "latent": [size, size], "batch": 2, "dtype": str(dtype).replace("torch.", ""),
              "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
              "steps_per_variant": len(times["unpatched"]),
              "fused_gate_used": bool(device.type == "cuda" and fused_patch.fused_cases > 0),
              # the fused and eager gates on the same step: their difference next to the gate's own effect
              "fused_vs_eager_max_abs_diff": float((fused - eager).abs().max()),
              # the gate with and without writing the concatenation: the same math, other output strides
              # (0 with --comfyui, whose UNet never takes the concatenation from the gate)
              "concatenation_vs_plain_max_abs_diff": float((fused - unjoined).abs().max()),
              "gate_effect_max_abs": float((eager - ref).abs().max()),
              # the unpatched step's median by its place in the round: how much the place alone moves a step
              "unpatched_median_ms_by_place": _median_by_place(times["unpatched"], places["unpatched"]),
              "variants": {}}
    for name, samples in times.items():
        # paired: each timed step against the unpatched step of the same round (drift cancels)
        paired = statistics.median(t / u for t, u in zip(samples, times["unpatched"], strict=True))
        samples = sorted(samples)
        median = statistics.median(samples)
        result["variants"][name] = {
            "overhead_paired_pct": round((paired - 1.0) * 100.0, 2),
            "median_ms": round(median * 1e3, 3),
            "p10_ms": round(samples[len(samples) // 10] * 1e3, 3),
            "p90_ms": round(samples[(9 * len(samples)) // 10] * 1e3, 3),
            "overhead_pct": round((median / base - 1.0) * 100.0, 2),
            "overhead_p10_pct": round((samples[len(samples) // 10] / base_p10 - 1.0) * 100.0, 2),
            **kernels.get(name, {}),
            "output_changed": bool(not torch.equal(outputs[name], ref)),
            "output_finite": bool(torch.isfinite(outputs[name]).all()),
        }
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", nargs="?", const="-", default=None,
                        help="write the results as JSON to this file ('-' or no value: stdout)")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run on reduced configs, few steps")
    parser.add_argument("--families", default="sd1,sdxl")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps per variant per round")
    parser.add_argument("--comfyui", default=None, metavar="PATH",
                        help="time ComfyUI's own UNet from the ComfyUI checkout at PATH (same weights) in place of ours")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    load_core()
    device = torch.device("cpu" if args.quick and args.device == "cuda" and not torch.cuda.is_available()
                          else args.device)
    if args.quick:
        torch.set_num_threads(1)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    warmup = 2 if args.quick else 10
    # variants alternate every step (steps=1) so drift and interference hit all of them alike
    rounds = args.rounds or (2 if args.quick else 200)
    steps = args.steps or (2 if args.quick else 1)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "quick": args.quick, "results": []}
    configs = _configs(args.quick)
    for family in [f.strip() for f in args.families.split(",") if f.strip()]:
        config, size = configs[family]
        result = bench_family(family, config, size, device, dtype, warmup, rounds, steps, args.comfyui)
        report["results"].append(result)
        for name, v in result["variants"].items():
            log.info("%-5s %-7s %-24s median %8.3f ms  (p10 %8.3f, p90 %8.3f)  overhead paired %+6.2f %%, of medians "
                     "%+6.2f %%, at p10 %+6.2f %%  GPU kernels %s ms (%+.2f %%, %s a step)  changed=%s finite=%s",
                     family, result["unet"], name, v["median_ms"], v["p10_ms"], v["p90_ms"], v["overhead_paired_pct"],
                     v["overhead_pct"], v["overhead_p10_pct"], v.get("gpu_kernel_ms", "-"),
                     v.get("gpu_overhead_pct", 0.0), v.get("kernels_per_step", "-"),
                     v["output_changed"], v["output_finite"])
    if args.json:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            sys.stdout.write(text + "\n")
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
