"""Our LDM-layout UNet against diffusers' UNet2DConditionModel, same weights, same inputs.

Cases (as in FACTS.md's speed table): SD1.5 fp16 batch 2, 64x64 latents, 77x768 context;
SDXL fp16 batch 2, 128x128 latents, 77x2048 context plus the 2816-wide ADM vector
(diffusers: ``text_embeds`` + ``time_ids``; ours: ``y`` built the SGM way). Both models hold
the very same weight tensors (ours is filled by renaming diffusers' state dict through the
shared key map, ``assign=True``), so memory holds one copy. Variants alternate pass by pass;
each pass is timed between two ``torch.cuda.synchronize()`` calls; the median is reported,
with the max |difference| between the two outputs. ``--compile [blocks|full]`` adds runs of both
through ``unet_core.diffusion.compiled`` at the same scope (``dynamic=False``): ``blocks``
compiles every residual and transformer block on its own (diffusers' ResnetBlock2D and
BasicTransformerBlock, our ResBlock and BasicTransformerBlock), ``full`` the whole forward
(minutes for SDXL). A region that fails to compile runs eagerly and its error is recorded; the
max difference of each compiled model against its eager output is recorded too. On CPU,
compile is impractically slow (use eager).

    python benchmarks/bench_unet.py --device cuda --json unet.json        # the real cases, fp16
    python benchmarks/bench_unet.py --device cuda --compile
    python benchmarks/bench_unet.py --tiny                                # CPU smoke run, reduced configs

Needs only torch, diffusers and safetensors (plus this repository).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

from _pack import load_core  # benchmarks/ is on sys.path when a script runs

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench_unet")


load_core()
from unet_lab.unet_core.checkpoints.keymap import convert_diffusers_to_ldm  # noqa: E402
from unet_lab.unet_core.diffusion.embeddings import sdxl_adm_embedding  # noqa: E402
from unet_lab.unet_core.diffusion.unet import UNetModel  # noqa: E402
from unet_lab.unet_core.unet_config import SD1_CONFIG, SDXL_CONFIG, UNetConfig  # noqa: E402

TINY_SD1 = UNetConfig(block_out_channels=(32, 64, 64), transformer_layers_per_block=(1, 1, 0),
                      num_attention_heads=(2, 2, 2), cross_attention_dim=64, norm_num_groups=8)
TINY_SDXL = UNetConfig(block_out_channels=(32, 64, 64), transformer_layers_per_block=(0, 1, 2),
                       num_attention_heads=(1, 2, 2), cross_attention_dim=64, norm_num_groups=8,
                       use_linear_projection=True, addition_embed_type="text_time",
                       addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8)


def diffusers_kwargs(config: UNetConfig) -> dict:
    depths = config.transformer_layers_per_block
    kw = dict(in_channels=config.in_channels, out_channels=config.out_channels,
              down_block_types=tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths),
              up_block_types=tuple("CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)),
              block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
              cross_attention_dim=config.cross_attention_dim, attention_head_dim=config.num_attention_heads,
              use_linear_projection=config.use_linear_projection, norm_num_groups=config.norm_num_groups,
              transformer_layers_per_block=tuple(max(d, 1) for d in depths))
    if config.addition_embed_type:
        kw.update(addition_embed_type=config.addition_embed_type,
                  addition_time_embed_dim=config.addition_time_embed_dim,
                  projection_class_embeddings_input_dim=config.projection_class_embeddings_input_dim)
    return kw


@torch.no_grad()
def build_pair(config: UNetConfig, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """(diffusers model, our model) sharing one set of random weights on ``device`` in ``dtype``."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        ref = UNet2DConditionModel(**diffusers_kwargs(config))
    ref = torch.nn.Module.to(ref.to_empty(device=device), dtype=dtype).eval()  # (diffusers warns on .to)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in ref.named_parameters():
        if p.ndim == 1:
            p.copy_(1.0 + 0.05 * torch.randn(p.shape, generator=gen, device=device) if name.endswith("weight")
                    else 0.02 * torch.randn(p.shape, generator=gen, device=device))
        else:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=gen, device=device) / fan_in ** 0.5)
    with torch.device("meta"):
        ours = UNetModel(config)
    ours.load_state_dict(convert_diffusers_to_ldm(ref.state_dict(), config), strict=True, assign=True)
    ours.dtype = dtype
    return ref, ours.eval()


def make_inputs(config: UNetConfig, batch: int, size: int, tokens: int, device, dtype, pooled: int):
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(batch, config.in_channels, size, size, generator=gen, device=device, dtype=dtype)
    t = torch.tensor([999.0, 1.0][:batch] + [500.0] * max(0, batch - 2), device=device)
    ctx = torch.randn(batch, tokens, config.cross_attention_dim, generator=gen, device=device, dtype=dtype)
    ref_kw, our_kw = {}, {}
    if config.addition_embed_type:
        text = torch.randn(batch, pooled, generator=gen, device=device, dtype=dtype)
        ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * batch, device=device, dtype=dtype)
        ref_kw = {"added_cond_kwargs": {"text_embeds": text, "time_ids": ids}}
        our_kw = {"y": sdxl_adm_embedding(text, ids, config.addition_time_embed_dim)}
    return x, t, ctx, ref_kw, our_kw


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variants(fns: dict, device: torch.device, warmup: int, iters: int) -> dict[str, list[float]]:
    """Alternate the variants pass by pass; returns per-variant lists of ms."""
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        _sync(device)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(iters):
            for name, fn in fns.items():
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


DIFFUSERS_BLOCKS = {"ResnetBlock2D": "forward", "BasicTransformerBlock": "forward"}  # diffusers' matching ours


def _sample(output):
    return output.sample if hasattr(output, "sample") else output[0]


def _compile_errors(*objects) -> list[str]:
    """Failures recorded by the compiled regions (CompiledCall) of these models or wrappers."""
    from unet_lab.unet_core.compiling import CompiledCall

    found = []
    for obj in objects:
        calls = [obj] if isinstance(obj, CompiledCall) else []
        if isinstance(obj, torch.nn.Module):
            calls += [c for m in obj.modules() for c in vars(m).values() if isinstance(c, CompiledCall)]
        found += [c.error for c in calls if c.error]
    return found


def run_case(name: str, config: UNetConfig, batch: int, size: int, tokens: int, pooled: int, device, dtype,
             warmup: int, iters: int, compile_scope: str | None) -> dict:
    ref, ours = build_pair(config, device, dtype)
    x, t, ctx, ref_kw, our_kw = make_inputs(config, batch, size, tokens, device, dtype, pooled)
    with torch.inference_mode():
        a = ref(x, t, ctx, **ref_kw).sample.float()
        b = ours(x, t, ctx, **our_kw).float()
    result = {"case": name, "batch": batch, "latent": size, "tokens": tokens, "dtype": str(dtype).replace("torch.", ""),
              "device": str(device), "params_M": round(sum(p.numel() for p in ours.parameters()) / 1e6, 1),
              "max_abs_diff": float((a - b).abs().max()), "ref_abs_max": float(a.abs().max())}
    fns = {"diffusers": lambda: ref(x, t, ctx, **ref_kw).sample, "ours": lambda: ours(x, t, ctx, **our_kw)}
    if compile_scope:
        from unet_lab.unet_core.diffusion.compiled import compile_blocks, compile_unet

        # the same scope on both sides: the whole model, or its residual + transformer blocks
        started = time.perf_counter()
        if compile_scope == "full":
            c_ref = compile_unet(ref, "full", dynamic=False)
            c_ours = compile_unet(ours, "full", dynamic=False)
        else:  # blocks are compiled in place: on copies, so the eager variants stay eager
            c_ref = copy.deepcopy(ref)
            compile_blocks(c_ref, DIFFUSERS_BLOCKS, "diffusers", dynamic=False)
            c_ours = compile_unet(copy.deepcopy(ours), "blocks", dynamic=False)
        with torch.inference_mode():
            c_a = _sample(c_ref(x, t, ctx, **ref_kw)).float()
            c_b = c_ours(x, t, ctx, **our_kw).float()
        _sync(device)
        result["compile"] = {"scope": compile_scope, "first_call_s": round(time.perf_counter() - started, 1),
                             "errors": sorted({e for e in _compile_errors(ref, ours, c_ref, c_ours) if e}),
                             "max_abs_diff_compiled_vs_eager": {"diffusers": float((c_a - a).abs().max()),
                                                                "ours": float((c_b - b).abs().max())}}
        fns["diffusers+compile"] = lambda: _sample(c_ref(x, t, ctx, **ref_kw))
        fns["ours+compile"] = lambda: c_ours(x, t, ctx, **our_kw)
    times = time_variants(fns, device, warmup, iters)
    result["median_ms"] = {k: round(statistics.median(v), 3) for k, v in times.items()}
    result["min_ms"] = {k: round(min(v), 3) for k, v in times.items()}
    med = result["median_ms"]
    result["ratio_ours_over_diffusers"] = round(med["ours"] / med["diffusers"], 3)
    if "ours+compile" in med:
        result["ratio_compiled_ours_over_diffusers"] = round(med["ours+compile"] / med["diffusers+compile"], 3)
    ref = ours = fns = None  # drop them (the closures hold them too) before emptying the cache
    if compile_scope:
        c_ref = c_ours = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="fp16 (default on cuda), bf16 or fp32 (default on cpu)")
    parser.add_argument("--tiny", action="store_true", help="reduced configs and sizes (CPU smoke run)")
    parser.add_argument("--cases", default="sd15,sdxl", help="comma list of sd15, sdxl")
    parser.add_argument("--compile", nargs="?", const="blocks", default=None, choices=["blocks", "full"],
                        help="also time both models through torch.compile: 'blocks' (default; every residual and "
                             "transformer block compiled on its own) or 'full' (the whole forward)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    dtype = names[args.dtype] if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    warmup = args.warmup if args.warmup is not None else (10 if device.type == "cuda" else 1)
    iters = args.iters if args.iters is not None else (50 if device.type == "cuda" else 3)
    if args.compile:  # one compiled variant per block shape: SDXL has more than the default limit
        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(torch._dynamo.config, limit, 64)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    cases = {
        "sd15": (TINY_SD1, 2, 16, 8, 0) if args.tiny else (SD1_CONFIG, 2, 64, 77, 0),
        "sdxl": (TINY_SDXL, 2, 16, 8, 32) if args.tiny else (SDXL_CONFIG, 2, 128, 77, 1280),
    }
    results = []
    for name in [c.strip() for c in args.cases.split(",") if c.strip()]:
        config, batch, size, tokens, pooled = cases[name]
        log.info("running %s%s on %s (%s)...", name, " (tiny)" if args.tiny else "", device, dtype)
        results.append(run_case(name + ("-tiny" if args.tiny else ""), config, batch, size, tokens, pooled, device,
                                dtype, warmup, iters, args.compile))
        log.info("%s: %s", name, json.dumps(results[-1]["median_ms"]))
        if args.json:  # after each case, so a run cut short keeps what it measured
            args.json.write_text(json.dumps({"results": results}, indent=2))

    variants = ["diffusers", "ours", "diffusers+compile", "ours+compile"]
    header = (f"{'case':12} {'dtype':8} " + " ".join(f"{v:>18}" for v in variants)
              + f" {'ours/diff':>9} {'compiled':>9} {'max|diff|':>10}")
    lines = [header, "-" * len(header)]
    for r in results:
        cells = " ".join(f"{r['median_ms'].get(v, float('nan')):>15.2f} ms" if v in r["median_ms"] else f"{'-':>18}"
                         for v in variants)
        compiled = r.get("ratio_compiled_ours_over_diffusers")
        lines.append(f"{r['case']:12} {r['dtype']:8} {cells} {r['ratio_ours_over_diffusers']:>9.3f} "
                     f"{compiled if compiled is not None else '-':>9} {r['max_abs_diff']:>10.2e}")
    env = {"torch": torch.__version__, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
           else "cpu", "threads": torch.get_num_threads()}
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    print("\n".join(lines))  # the table is this script's output
    print(json.dumps(env))
    if args.json:
        args.json.write_text(json.dumps({"env": env, "results": results}, indent=2))
        log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
