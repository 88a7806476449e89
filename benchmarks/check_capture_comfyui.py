"""Accelerate UNet inside a real ComfyUI: its own loading, sampler and model management.

Imports ComfyUI from a checkout and loads this pack the way ComfyUI loads a custom node (its
``__init__.py`` under a path-derived package name), so the pack's ComfyUI host
(``nodes/host/comfy.py``) is the one in use. Per family (SD1.5; SDXL with ``--families sd1,sdxl``):

1. a random UNet state dict of the family's LDM layout, made by code (the pack's UNet, seeded), loaded
   by ``comfy.sd.load_diffusion_model_state_dict`` as core UNETLoader loads a file: a ModelPatcher;
2. the pack's Accelerate UNet node on it, then ComfyUI's sampler path (``comfy.sample.sample``:
   KSampler, CFG, ``load_models_gpu``) for a few Euler steps with seeded noise and random
   conditioning shaped like CLIP output (``[[cond, {"pooled_output": ...}]]``), eager and
   accelerated: bitwise equal, the first run capturing and a second one only replaying.
   The runs pass one fixed sigma schedule (computed once on the CPU). KSampler's own schedule
   depends on the model's load state: ``ModelSamplingDiscrete.sigma`` interpolates and
   exponentiates on the device of its ``log_sigmas`` buffer, which is the CPU when KSampler is
   built before the first load of a run and the GPU afterwards, and the two differ in the last
   bits, so an eager run right after a load differs from the next eager run. Two checks
   measure that: eager is reproducible across load states with the fixed schedule, and with
   KSampler's own schedule accelerated equals eager when both run right after a load;
3. ``comfy.model_management.unload_all_models()`` and ``soft_empty_cache()``: the accelerated run
   again equals eager, and the accelerator has captured anew (ComfyUI's detach dropped its graphs);
4. a LoRA through core ``comfy.sd.load_lora_for_models`` (random kohya-named weights, strength 0.5
   then 1.0) and the pack's Skip Attention Gate node (0.3 then 0.8), under the accelerator: equal
   to eager, and the changed setting moves the output as it moves eager's;
5. a low-VRAM load (ComfyUI's ``--novram`` state, so ``load_models_gpu`` loads the model partially
   and streams weights per layer): the accelerated run equals eager, captures nothing, and the
   accelerator logs why it runs eagerly.

On the CPU (``--device cpu``: ComfyUI's ``--cpu``, reduced configs that ComfyUI still detects as
SD1.5 / SDXL) the node is a no-op that says so ("eager: no CUDA"); the accelerator is then installed
through the host directly and checked to run eagerly and equal eager, after which it gets a
rehearsal capturer (keeps the static arguments, "replays" by calling the forward on them), so
steps 2 to 4 check its keying, static buffers and releases under ComfyUI's real sampler and model
management with no CUDA graph. Step 5 is GPU-only (the CPU has no low-VRAM mode): SKIP.

One line per check (PASS / FAIL / SKIP); exit status 1 on any failure.

    python benchmarks/check_capture_comfyui.py ~/ComfyUI --device cuda --families sd1,sdxl --json out.json

Needs what ``comfy.sd`` imports (torchvision among them), not ComfyUI's ``nodes``/``server``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from _capture_setup import bitwise_equal

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger("check_capture_comfyui")


# -- ComfyUI and the pack -------------------------------------------------------------------
def import_comfyui(checkout: str, device: torch.device) -> dict[str, ModuleType]:
    """ComfyUI's modules from ``checkout``, with ``--cpu`` set when running on the CPU."""
    root = Path(checkout).expanduser().resolve()
    if not (root / "comfy" / "sd.py").is_file():
        raise SystemExit(f"{checkout}: not a ComfyUI checkout (no comfy/sd.py)")
    sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = device.type == "cpu"  # read when comfy.model_management is first imported
    import comfy.model_management
    import comfy.patcher_extension
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    import folder_paths

    version = "unknown"
    try:
        version = importlib.import_module("comfyui_version").__version__
    except (ImportError, AttributeError):
        pass
    log.info("ComfyUI %s from %s on %s", version, root, comfy.model_management.get_torch_device())
    return {"sd": comfy.sd, "sample": comfy.sample, "samplers": comfy.samplers, "mm": comfy.model_management,
            "extension": comfy.patcher_extension, "folder_paths": folder_paths, "version": version}


def load_pack_as_comfyui() -> ModuleType:
    """The pack imported as ComfyUI's ``load_custom_node`` imports a folder: its path as the name."""
    name = str(REPO).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def pack_module(pack: ModuleType, relative: str) -> ModuleType:
    return importlib.import_module(f"{pack.__name__}.{relative}")


# -- models and conditioning ------------------------------------------------------------------
def family_config(pack: ModuleType, family: str, full: bool):
    """The family's config; reduced (fewer levels and layers) when not ``full``, but with the
    channel, context and transformer-depth keys ComfyUI's model detection matches on."""
    configs = pack_module(pack, "unet_core.unet_config")
    if family == "sd1":
        return configs.SD1_CONFIG if full else configs.SD1_CONFIG.with_(
            block_out_channels=(320, 640), layers_per_block=1, transformer_layers_per_block=(1, 1),
            num_attention_heads=(8, 8))
    if family == "sdxl":
        return configs.SDXL_CONFIG if full else configs.SDXL_CONFIG.with_(
            block_out_channels=(320, 320, 320), num_attention_heads=(5, 5, 5))
    raise SystemExit(f"unknown family {family!r} (sd1, sdxl)")


def random_state_dict(pack: ModuleType, config, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """LDM-layout UNet weights (bare keys), seeded, made on ``device``."""
    unet_module = pack_module(pack, "unet_core.diffusion.unet")
    torch.manual_seed(0)
    with torch.device(device):
        unet = unet_module.UNetModel(config)
    return {k: v.to(dtype) for k, v in unet.state_dict().items()}


def conditioning(config, seed: int) -> list:
    """A CLIP-shaped ``CONDITIONING``: ``[[cond [1, 77, context_dim], {"pooled_output": [1, 1280]}]]``."""
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, 77, config.cross_attention_dim, generator=gen)
    return [[cond, {"pooled_output": torch.randn(1, 1280, generator=gen)}]]


def random_lora(model: Any, comfy_lora: ModuleType, rank: int = 8) -> dict[str, torch.Tensor]:
    """A kohya-named LoRA (``lora_unet_*.lora_up/down.weight``, ``.alpha``) on every attention projection."""
    gen = torch.Generator().manual_seed(1)
    weights = model.model.state_dict()
    lora = {}
    for key, target in comfy_lora.model_lora_keys_unet(model.model, {}).items():
        weight = weights.get(target)
        if not key.startswith("lora_unet_input_blocks") and not key.startswith("lora_unet_output_blocks") \
                and not key.startswith("lora_unet_middle_block"):
            continue
        if weight is None or weight.ndim != 2 or ".attn" not in target:
            continue
        lora[f"{key}.lora_up.weight"] = torch.randn(weight.shape[0], rank, generator=gen) * 0.05
        lora[f"{key}.lora_down.weight"] = torch.randn(rank, weight.shape[1], generator=gen) * 0.05
        lora[f"{key}.alpha"] = torch.tensor(float(rank))
    return lora


# -- the run ----------------------------------------------------------------------------------------
@dataclass
class Checks:
    """One line per check; ``failed`` when any did."""

    rows: list[dict] = field(default_factory=list)

    def add(self, family: str, name: str, ok: bool | None, detail: str = "") -> bool:
        status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append({"family": family, "check": name, "status": status, "detail": detail})
        log.info("%s  %-5s %-58s %s", status, family, name, detail)
        return bool(ok)

    @property
    def failed(self) -> bool:
        return any(r["status"] == "FAIL" for r in self.rows)


class LogTap(logging.Handler):
    """Keeps the accelerator's log lines, to check that a reason was logged."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class Sampler:
    """ComfyUI's sampler path with fixed noise, conditioning, steps and CFG; ``sigmas`` fixes the
    schedule (None: KSampler computes it from the model's ``model_sampling``, wherever that sits)."""

    comfy: dict
    config: Any
    size: int
    steps: int
    sigmas: torch.Tensor | None = None
    seed: int = 42

    def __call__(self, model: Any) -> torch.Tensor:
        sample = self.comfy["sample"]
        latent = torch.zeros(1, 4, self.size, self.size)
        noise = sample.prepare_noise(latent, self.seed)
        sigmas = None if self.sigmas is None else self.sigmas.clone()
        return sample.sample(model, noise, self.steps, 5.0, "euler", "normal", conditioning(self.config, 1),
                             conditioning(self.config, 2), latent, denoise=1.0, disable_pbar=True, seed=self.seed,
                             sigmas=sigmas)


def schedule_on(comfy: dict, model: Any, steps: int, device: str) -> torch.Tensor:
    """KSampler's "normal" schedule computed with a copy of the model's ``model_sampling`` on ``device``."""
    sampling = copy.deepcopy(model.get_model_object("model_sampling")).to(device)
    return comfy["samplers"].calculate_sigmas(sampling, "normal", steps).cpu()


def accelerator_of(model: Any, comfy: dict, wrapper_key: str):
    wrappers = model.wrappers.get(comfy["extension"].WrappersMP.DIFFUSION_MODEL, {})
    found = wrappers.get(wrapper_key, [])
    return found[0] if found else None


def accelerate(pack: ModuleType, comfy: dict, model: Any, on_gpu: bool, checks: Checks, family: str,
               sampler: Sampler):
    """The node's MODEL and its accelerator (on the CPU: the host's, installed directly, checked to run
    eagerly, then given the rehearsal capturer)."""
    node = pack.NODE_CLASS_MAPPINGS["UNetLabAccelerateUNet"]()
    fast, report = node.accelerate(model, True, False, 8)
    install = pack_module(pack, "unet_core.acceleration.install")
    settings = pack_module(pack, "unet_core.acceleration.accelerator").AccelerationSettings(max_graphs=8)
    host = pack_module(pack, "nodes.host").get_host()
    checks.add(family, "pack host is ComfyUI's", type(host).__name__ == "ComfyHost", type(host).__name__)
    if on_gpu:
        accel = accelerator_of(fast, comfy, install.WRAPPER_KEY)
        checks.add(family, "node installed its accelerator as a wrapper", accel is not None and fast is not model,
                   report.splitlines()[0][:60])
        return fast, accel
    checks.add(family, "node is a no-op on the CPU and says so", fast is model and "does nothing" in report,
               "eager: no CUDA")
    fast, accel = host.accelerate_unet(model, settings)
    out = sampler(fast)
    checks.add(family, "host's accelerator on the CPU: eager, == eager", bitwise_equal(out, sampler(model))
               and accel.stats.captures == 0 and any("no CUDA" in r for r in accel.stats.eager_reasons),
               "eager: no CUDA")
    accel.capturer, accel.device_types = RehearsalCapturer(), ("cpu",)
    return fast, accel


class RehearsalCapturer:
    """For the CPU run: "captures" by keeping the static arguments, "replays" by calling the forward on
    them again. So the accelerator's keying, static buffers and releases are exercised under ComfyUI's
    real sampler and model management, with no CUDA graph."""

    def capture(self, fn, args, kwargs, device, compiling):
        from types import SimpleNamespace

        outputs = fn(*args, **kwargs)
        return SimpleNamespace(outputs=outputs, replay=lambda: outputs.copy_(fn(*args, **kwargs)),
                               seconds=0.0, compile_seconds=0.0, pool_bytes=0)


def compare(checks: Checks, family: str, name: str, accel, sampler: Sampler, fast: Any, reference: torch.Tensor,
            expect_capture: bool | None) -> torch.Tensor:
    """Sample ``fast``; check bitwise equality with ``reference`` and the capture count."""
    before = (accel.stats.captures, accel.stats.replays, accel.stats.eager_calls)
    out = sampler(fast)
    captures, replays, eager = (a - b for a, b in zip(
        (accel.stats.captures, accel.stats.replays, accel.stats.eager_calls), before, strict=True))
    equal = bitwise_equal(out, reference)
    ok = equal and bool(torch.isfinite(out).all())
    detail = f"captures +{captures} replays +{replays} eager +{eager}"
    if expect_capture is not None:
        ok = ok and ((captures >= 1) if expect_capture else (captures == 0 and replays >= sampler.steps))
    checks.add(family, name, ok, detail + ("" if equal else " NOT bitwise equal"))
    return out


def check_family(pack: ModuleType, comfy: dict, family: str, args, device, dtype, checks: Checks, tap: LogTap):
    on_gpu = device.type == "cuda"
    mm, sd = comfy["mm"], comfy["sd"]
    config = family_config(pack, family, args.full or (args.full is None and on_gpu))
    weights = random_state_dict(pack, config, device, dtype)
    base = sd.load_diffusion_model_state_dict(weights, model_options={"dtype": dtype})
    del weights
    detected = type(getattr(getattr(base, "model", None), "model_config", None)).__name__
    wanted = {"sd1": "SD15", "sdxl": "SDXL"}[family]
    if not checks.add(family, "ComfyUI loads the state dict (UNETLoader path)", detected == wanted, detected):
        return
    sampler = Sampler(comfy, config, args.size or (64 if on_gpu else 8), args.steps,
                      sigmas=schedule_on(comfy, base, args.steps, "cpu"))
    fast, accel = accelerate(pack, comfy, base, on_gpu, checks, family, sampler)
    check_schedule_dependence(comfy, family, accel, sampler, base, fast, device, checks)

    eager = sampler(base)
    checks.add(family, "eager sampling output is finite", bool(torch.isfinite(eager).all()),
               f"max |x| {float(eager.abs().max()):.3g}")
    compare(checks, family, "accelerated == eager (first run: capture)", accel, sampler, fast, eager, True)
    compare(checks, family, "accelerated == eager (second run: replay only)", accel, sampler, fast, eager,
            False)

    mm.unload_all_models()
    mm.soft_empty_cache()
    compare(checks, family, "after unload_all_models: accelerated == eager", accel, sampler, fast, eager,
            True)
    checks.add(family, "eager again after the reload == first eager", bitwise_equal(sampler(base), eager))

    lora_sd = random_lora(base, importlib.import_module("comfy.lora"))
    lora_outputs = []
    for strength in (0.5, 1.0):
        lora_eager, _ = sd.load_lora_for_models(base, None, dict(lora_sd), strength, 0)
        lora_fast, _ = sd.load_lora_for_models(fast, None, dict(lora_sd), strength, 0)
        reference = sampler(lora_eager)
        lora_outputs.append(reference)
        # ComfyUI patches LoRA weights into new tensors: new addresses key a new graph, unless the
        # allocator hands back the old addresses, where replaying reads the new values: correct too.
        compare(checks, family, f"LoRA {strength} (core load_lora_for_models): accelerated == eager", accel,
                sampler, lora_fast, reference, None)
    checks.add(family, f"LoRA on {len(lora_sd) // 3} layers: strength 1.0 output differs from 0.5",
               not bitwise_equal(*lora_outputs))

    gate_node = pack.NODE_CLASS_MAPPINGS["UNetLabSkipAttentionGate"]()
    gate_outputs = []
    for strength in (0.3, 0.8):
        gated_eager = gate_node.patch(base, strength, "all", "", 0.1, "both", record_maps=False)[0]
        gated_fast = gate_node.patch(fast, strength, "all", "", 0.1, "both", record_maps=False)[0]
        reference = sampler(gated_eager)
        gate_outputs.append(reference)
        compare(checks, family, f"skip gate {strength} (pack node): accelerated == eager", accel, sampler,
                gated_fast, reference, True)
    checks.add(family, "skip gate 0.8 output differs from 0.3", not bitwise_equal(*gate_outputs))

    check_low_vram(comfy, family, accel, sampler, base, fast, on_gpu, checks, tap)
    mm.unload_all_models()
    mm.soft_empty_cache()
    log.info("%s: %s", family, accel.stats.summary().replace("\n", "; "))


def check_schedule_dependence(comfy: dict, family: str, accel, sampler: Sampler, base: Any, fast: Any,
                              device: torch.device, checks: Checks) -> None:
    """KSampler's own schedule moves with the load state (module docstring); the fixed one does not,
    and with KSampler's own, accelerated equals eager in the same load state (right after a load)."""
    mm = comfy["mm"]
    on_cpu, on_device = schedule_on(comfy, base, sampler.steps, "cpu"), schedule_on(comfy, base, sampler.steps, device)
    moved = float((on_cpu - on_device).abs().max())
    mm.unload_all_models()
    after_load = sampler(base)
    later = sampler(base)
    checks.add(family, "fixed schedule: eager right after a load == eager later", bitwise_equal(after_load, later),
               f"KSampler's schedule on the CPU vs {device.type}: max |d sigma| {moved:.3g}")
    own = replace(sampler, sigmas=None)
    mm.unload_all_models()
    eager = own(base)
    mm.unload_all_models()
    compare(checks, family, "KSampler's own schedule, right after a load: accelerated == eager", accel, own, fast,
            eager, None)
    mm.unload_all_models()


def check_low_vram(comfy: dict, family: str, accel, sampler: Sampler, base: Any, fast: Any, on_gpu: bool,
                   checks: Checks, tap: LogTap) -> None:
    """ComfyUI's ``--novram`` state: every load partial, weights streamed per layer: eager, logged."""
    name = "low-VRAM partial load: eager, reason logged, == eager"
    if not on_gpu:
        checks.add(family, name, None, "the CPU has no low-VRAM mode")
        return
    mm = comfy["mm"]
    saved = mm.vram_state
    mm.unload_all_models()
    mm.vram_state = mm.VRAMState.NO_VRAM
    try:
        reference = sampler(base)
        partial = bool(getattr(base.model, "model_lowvram", False))
        tap.lines.clear()
        before = (accel.stats.captures, accel.stats.eager_calls)
        out = sampler(fast)
        partial = partial and bool(getattr(fast.model, "model_lowvram", False))
    finally:
        mm.unload_all_models()
        mm.vram_state = saved
    captures, eager = accel.stats.captures - before[0], accel.stats.eager_calls - before[1]
    logged = [line for line in tap.lines if "running eagerly" in line and "low VRAM" in line]
    reasons = [r for r in accel.stats.eager_reasons if "low VRAM" in r]
    ok = partial and captures == 0 and eager >= sampler.steps and bool(reasons) and bitwise_equal(out, reference)
    detail = f"partial={partial} captures +{captures} eager +{eager} logged={'yes' if logged else 'before'}"
    checks.add(family, name, ok and bool(logged or reasons), detail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comfyui", metavar="PATH_TO_COMFYUI")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    parser.add_argument("--families", default="sd1", help="comma-separated: sd1, sdxl")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", type=int, default=None, help="latent size (default 64 on CUDA, 8 on the CPU)")
    parser.add_argument("--full", action=argparse.BooleanOptionalAction, default=None,
                        help="real-size configs (default on CUDA) or reduced ones (default on the CPU)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    comfy = import_comfyui(args.comfyui, device)
    pack = load_pack_as_comfyui()
    tap = LogTap()
    logging.getLogger(f"{pack.__name__}.unet_core.acceleration").addHandler(tap)
    checks = Checks()
    for family in args.families.split(","):
        check_family(pack, comfy, family.strip(), args, device, dtype, checks, tap)
    log.info("check_capture_comfyui: %s (%d checks)", "FAILED" if checks.failed else "PASSED", len(checks.rows))
    if args.json:
        header = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "torch": torch.__version__, "comfyui": comfy["version"]}
        with open(args.json, "w") as f:
            json.dump({**header, "checks": checks.rows, "passed": not checks.failed}, f, indent=2)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
