"""Cost of applying and baking a rank-64, all-modules SDXL LoRA, and of a sampling step after patching.

1. **patch** (CPU, real SDXL structure on the meta device): read and check the LoRA against the
   model (``plan_lora``: key mapping, NaN/inf and shape checks, block grouping), then clone the
   patcher and ``add_patches`` per block. No weight is touched; this is what Apply LoRA costs.
2. **bake** (CPU): the merge itself, for every patched weight, at real SDXL shapes in fp16. By
   default the weights are streamed (each module's weight is made, merged and dropped) so memory
   stays under 1 GB; ``--bake full`` builds the whole 5.1 GB fp16 UNet and
   calls ``UNetPatcher.baked_state_dict()`` (needs about 2x that in free RAM). Reference in the same
   run: the plain merge ``W + s * (up @ down) * alpha / rank`` written here, on the same tensors.
3. **step** (``--device cuda``): SDXL UNet fp16, batch 2, 128x128 latents, 77x2048 context; the
   median of timed forward passes of the unpatched model vs the patched clone (Apply LoRA: merged
   weights computed once at the first step, reported separately, then cached) vs the baked model
   (Bake LoRA: a plain model holding the merged weights). Variants alternate step by step, in a
   random order each round (``_rounds.py``); each step is timed between two ``torch.cuda.synchronize()``
   calls. "No per-step cost" is judged as patched / baked: the same weights, with and without the
   patching machinery; patched / unpatched (other weights) is reported beside it.

    python benchmarks/bench_lora.py                       # CPU: patch + streamed bake
    python benchmarks/bench_lora.py --device cuda --json out.json
    python benchmarks/bench_lora.py --quick               # smoke run (rank 8, a slice of the modules)
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from _pack import load_core  # benchmarks/ is on sys.path when a script runs
from _rounds import round_orders

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench_lora")
PREFIX = "diffusion_model."


def _lora_modules(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Every linear and conv weight inside the input, middle and output blocks (kohya 'all modules' + conv)."""
    return sorted(k[: -len(".weight")] for k, s in shapes.items()
                  if k.endswith(".weight") and len(s) >= 2
                  and k.startswith(("input_blocks.", "middle_block.", "output_blocks.")))


def _make_lora(shapes, modules, rank: int, dtype=torch.float16, seed: int = 0) -> dict[str, torch.Tensor]:
    """A kohya SDXL LoRA (LDM names) for ``modules``: conv LoRAs carry the kernel in ``lora_down``."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for module in modules:
        shape = shapes[module + ".weight"]
        r = min(rank, shape[0], shape[1])
        key = "lora_unet_" + module.replace(".", "_")
        down_shape = (r, *shape[1:])
        up_shape = (shape[0], r, 1, 1) if len(shape) == 4 else (shape[0], r)
        sd[key + ".lora_down.weight"] = (torch.randn(down_shape, generator=gen) * 0.01).to(dtype)
        sd[key + ".lora_up.weight"] = (torch.randn(up_shape, generator=gen) * 0.01).to(dtype)
        sd[key + ".alpha"] = torch.tensor(float(r) / 2)
    return sd


def _meta_patcher(config, family: str):
    from unet_lab.unet_core.diffusion.patcher import DiffusionModel, UNetPatcher
    from unet_lab.unet_core.diffusion.unet import UNetModel

    with torch.device("meta"):
        unet = UNetModel(config)
    return UNetPatcher(DiffusionModel(unet, family))


def bench_patch(config, lora, repeats: int) -> dict:
    """Time plan_lora + clone + add_patches per block on the real SDXL structure (meta weights)."""
    from unet_lab.nodes.host.standalone import StandaloneHost
    from unet_lab.unet_core.lora.plan import model_names, plan_lora

    host = StandaloneHost(device="cpu", show_progress=False)
    model = _meta_patcher(config, "sdxl")
    shapes = host.unet_weight_shapes(model)
    times_plan, times_add = [], []
    plan = patched = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        plan = plan_lora(lora, model_names(shapes, config), config, "sdxl", strength=0.8,
                         block_spec="default=1, IN=0.5, OUT03-05=0.2", source="bench")
        t1 = time.perf_counter()
        patched, applied = host.add_lora_patches(model, lora, plan)
        t2 = time.perf_counter()
        times_plan.append(t1 - t0)
        times_add.append(t2 - t1)
    return {"modules": len(plan.parsed.modules), "unmatched": len(plan.parsed.unmatched_keys),
            "patched_keys": len(patched.patches), "plan_s": min(times_plan), "add_patches_s": min(times_add),
            "patch_total_s": min(times_plan) + min(times_add), "plan": plan}


def bench_bake_streamed(shapes, plan, lora, limit_s: float | None) -> dict:
    """Merge each patched weight at real shape (fp16 storage, fp32 math), one module at a time.

    Ours: ``weight_patch.calculate_weight`` with the plan's patch entries (what the patcher's
    ``baked_state_dict`` runs per key). Reference: the plain merge written here.
    """
    from unet_lab.unet_core.diffusion.weight_patch import calculate_weight

    gen = torch.Generator().manual_seed(1)
    ours = ref = 0.0
    done = 0
    max_err = 0.0
    start = time.perf_counter()
    for group in plan.groups:
        for key, patch in group.patches.items():
            bare = key[len(PREFIX):]
            weight = (torch.randn(shapes[bare], generator=gen) * 0.02).to(torch.float16)
            module = patch.module
            t0 = time.perf_counter()
            work = weight.to(torch.float32, copy=True)
            merged = calculate_weight([(group.weight, patch, 1.0, None, None)], work, key).to(torch.float16)
            t1 = time.perf_counter()
            up = module.tensors["up"].float().flatten(1)
            down = module.tensors["down"].float().flatten(1)
            plain = (weight.float() + group.weight * (up @ down).reshape(weight.shape) * module.scale).to(torch.float16)
            t2 = time.perf_counter()
            ours += t1 - t0
            ref += t2 - t1
            max_err = max(max_err, (merged.float() - plain.float()).abs().max().item())
            done += 1
            if limit_s is not None and time.perf_counter() - start > limit_s:
                break
        else:
            continue
        break
    return {"mode": "streamed", "weights_merged": done, "ours_s": ours, "reference_s": ref,
            "ratio": ours / ref if ref else float("nan"), "max_abs_diff_fp16": max_err}


def bench_bake_full(config, lora) -> dict:
    """The whole fp16 SDXL UNet in RAM, patched and baked with ``UNetPatcher.baked_state_dict``."""
    from types import SimpleNamespace

    from unet_lab.nodes.host.standalone import StandaloneHost
    from unet_lab.unet_core.diffusion.patcher import create_model_patcher
    from unet_lab.unet_core.diffusion.unet import UNetModel
    from unet_lab.unet_core.lora.plan import model_names, plan_lora

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in UNetModel(config).state_dict().items()}
    gen = torch.Generator().manual_seed(2)
    sd = {k: (torch.randn(s, generator=gen) * 0.02).to(torch.float16) for k, s in shapes.items()}
    model = create_model_patcher(sd, SimpleNamespace(config=config, family="sdxl"))
    del sd
    host = StandaloneHost(device="cpu", show_progress=False)
    plan = plan_lora(lora, model_names(shapes, config), config, "sdxl", strength=0.8, source="bench")
    patched, _ = host.add_lora_patches(model, lora, plan)
    t0 = time.perf_counter()
    baked = patched.baked_state_dict()
    t1 = time.perf_counter()
    n = len(patched.patches)
    del baked
    return {"mode": "full", "weights_merged": n, "ours_s": t1 - t0}


def bench_step(config, lora, steps: int, warmup: int, device: torch.device) -> dict:
    """Forward pass of the unpatched SDXL UNet vs the patched clone, fp16 on ``device``."""
    from types import SimpleNamespace

    from unet_lab.nodes.host.standalone import StandaloneHost
    from unet_lab.unet_core.diffusion.patcher import create_model_patcher
    from unet_lab.unet_core.diffusion.unet import UNetModel
    from unet_lab.unet_core.lora.plan import model_names, plan_lora

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in UNetModel(config).state_dict().items()}
    gen = torch.Generator(device=device).manual_seed(3)
    sd = {k: (torch.randn(s, generator=gen, device=device) * 0.02).to(torch.float16) for k, s in shapes.items()}
    model = create_model_patcher(sd, SimpleNamespace(config=config, family="sdxl"), load_device=device,
                                 offload_device=device)
    del sd
    host = StandaloneHost(device=str(device), show_progress=False)
    lora_dev = {k: v.to(device) for k, v in lora.items()}
    plan = plan_lora(lora_dev, model_names(shapes, config), config, "sdxl", strength=0.8, source="bench")
    patched, _ = host.add_lora_patches(model, lora_dev, plan)
    baked = host.bake_lora_patches(patched)          # Bake LoRA: merged weights in a plain model
    side = 128 if device.type == "cuda" else 32
    x = torch.randn(2, 4, side, side, device=device, dtype=torch.float16)
    t = torch.tensor([500.0, 500.0], device=device)
    ctx = torch.randn(2, 77, config.cross_attention_dim, device=device, dtype=torch.float16)
    y = torch.randn(2, config.projection_class_embeddings_input_dim, device=device, dtype=torch.float16)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        sync()
        t0 = time.perf_counter()
        patched.apply_model(x, t, ctx, y=y)
        sync()
        first = time.perf_counter() - t0
        times = {"unpatched": [], "patched": [], "baked": []}
        variants = [("unpatched", model), ("patched", patched), ("baked", baked)]
        gc.disable()
        try:
            for i, order in enumerate(round_orders(variants, warmup + steps)):  # a random order each round
                for name, m in order:
                    sync()
                    t0 = time.perf_counter()
                    m.apply_model(x, t, ctx, y=y)
                    sync()
                    if i >= warmup:
                        times[name].append(time.perf_counter() - t0)
        finally:
            gc.enable()
    med = {k: statistics.median(v) for k, v in times.items()}

    def paired(a: str, b: str) -> float:
        """Median over rounds of (a's step / b's step of the same round)."""
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    return {"device": str(device), "latent": [2, 4, side, side], "first_patched_step_s": first,
            "unpatched_ms": med["unpatched"] * 1e3, "patched_ms": med["patched"] * 1e3,
            "baked_ms": med["baked"] * 1e3, "ratio": med["patched"] / med["unpatched"],
            "baked_ratio": med["baked"] / med["unpatched"],
            "paired_patched_over_unpatched": paired("patched", "unpatched"),
            "paired_patched_over_baked": paired("patched", "baked"), "steps": steps,
            "patched_weights_cached": len(patched.patched_weights())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda adds the sampling-step comparison)")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smoke run: rank 8, every 8th module, short bake")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--bake", choices=("streamed", "full", "none"), default="streamed")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 16 if args.device == "cuda" else 2)))

    load_core()
    from unet_lab.unet_core.diffusion.unet import UNetModel
    from unet_lab.unet_core.unet_config import SDXL_CONFIG

    config = SDXL_CONFIG
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in UNetModel(config).state_dict().items()}
    modules = _lora_modules(shapes)
    rank = 8 if args.quick else args.rank
    if args.quick:
        modules = modules[::8]
    lora = _make_lora(shapes, modules, rank)
    lora_mb = sum(v.numel() * v.element_size() for v in lora.values()) / 2**20
    results: dict = {"config": "SDXL (real shapes)", "rank": rank, "lora_modules": len(modules),
                     "lora_MiB_fp16": round(lora_mb, 1), "torch": torch.__version__,
                     "threads": torch.get_num_threads()}
    log.info("LoRA: %d modules, rank %d, %.0f MiB fp16", len(modules), rank, lora_mb)

    patch = bench_patch(config, lora, repeats=1 if args.quick else 3)
    plan = patch.pop("plan")
    results["patch"] = patch
    log.info("patch: plan %.3f s + add_patches %.3f s (%d modules, %d unmatched)", patch["plan_s"],
             patch["add_patches_s"], patch["modules"], patch["unmatched"])

    if args.bake == "streamed":
        results["bake"] = bench_bake_streamed(shapes, plan, lora, limit_s=5.0 if args.quick else None)
    elif args.bake == "full":
        results["bake"] = bench_bake_full(config, lora)
    if "bake" in results:
        log.info("bake: %s", results["bake"])

    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())   # the patcher compares devices exactly
    if device.type == "cuda":
        results["step"] = bench_step(config, lora, steps=5 if args.quick else args.steps, warmup=3, device=device)
        log.info("step: %s", results["step"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
