"""Models, patches and runners shared by ``bench_capture.py`` and ``check_capture.py``.

Two hosts of one UNet, random weights made on the device:

- ``ours``: the pack's UNet in the standalone ``UNetPatcher``; LoRA as weight patches on the
  patcher (patched tensors swapped in for each call), the skip gate as an ``output_block_patch``,
  the accelerator as a ``"diffusion_model"`` wrapper (``install_accelerator``);
- ``comfyui``: ComfyUI's own ``UNetModel`` from a checkout (``bench_skip_gate._comfy_unet``), called
  as ComfyUI's ``BaseModel`` calls it, with the accelerator in ``transformer_options["wrappers"]``
  where ComfyUI's sampler puts a ModelPatcher's wrappers, so ComfyUI's own ``WrapperExecutor`` runs
  it; LoRA as ComfyUI's ModelPatcher applies it at load (each patched weight a new Parameter).

Every runner is ``run(x, t, context, y) -> output``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

RANK = 8


@dataclass
class Run:
    """A script's device, dtype and report header from its parsed arguments."""

    device: torch.device
    on_gpu: bool
    dtype: torch.dtype
    header: dict


def start(args: Any) -> Run:
    """Log set-up, the pack loaded, fp16 on CUDA (fp32 on the CPU smoke run)."""
    import logging

    from _pack import load_core

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load_core()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    header = {"device": torch.cuda.get_device_name(device) if on_gpu else "cpu", "torch": torch.__version__,
              "comfyui": args.comfyui}
    return Run(device, on_gpu, torch.float16 if on_gpu else torch.float32, header)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (NaN-safe: compares the bit patterns)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return bool(torch.equal(a.contiguous().view(ints), b.contiguous().view(ints)))


def configs(quick: bool) -> dict[str, Any]:
    from unet_lab.unet_core.unet_config import SD1_CONFIG, SDXL_CONFIG, UNetConfig

    if not quick:
        return {"sd1": SD1_CONFIG, "sdxl": SDXL_CONFIG, "sd1_inpaint": SD1_CONFIG.with_(in_channels=9)}
    sd1 = UNetConfig(block_out_channels=(32, 64, 64), layers_per_block=1, transformer_layers_per_block=(1, 1, 0),
                     num_attention_heads=(2, 2, 2), cross_attention_dim=64, norm_num_groups=32)
    sdxl = sd1.with_(transformer_layers_per_block=(0, 1, 2), use_linear_projection=True,
                     addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=64)
    return {"sd1": sd1, "sdxl": sdxl, "sd1_inpaint": sd1.with_(in_channels=9)}


def make_inputs(config, batch: int, size: int, device, dtype, seed: int = 0) -> tuple:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(batch, config.in_channels, size, size, generator=gen).to(device, dtype)
    t = torch.linspace(999.0, 100.0, batch).to(device)
    context = torch.randn(batch, 77, config.cross_attention_dim, generator=gen).to(device, dtype)
    y = None
    if config.projection_class_embeddings_input_dim:
        y = torch.randn(batch, config.projection_class_embeddings_input_dim, generator=gen).to(device, dtype)
    return x, t, context, y


def our_patcher(config, family: str, device, dtype):
    from unet_lab.unet_core.diffusion.patcher import DiffusionModel, UNetPatcher
    from unet_lab.unet_core.diffusion.unet import UNetModel

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNetModel(config)
    unet = unet.to(dtype=dtype).eval().requires_grad_(False)
    unet.dtype = dtype
    return UNetPatcher(DiffusionModel(unet, family), load_device=device, offload_device="cpu")


def lora_deltas(unet: torch.nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """Bare key -> rank-8 delta (up @ down) for every attention projection (what a LoRA merges)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    deltas = {}
    for name, p in unet.named_parameters():
        if ".attn" in name and name.endswith(".weight") and p.ndim == 2:
            up = torch.randn(p.shape[0], RANK, generator=gen) * 0.05
            down = torch.randn(RANK, p.shape[1], generator=gen) * 0.05
            deltas[name] = (up @ down).to(p.device, p.dtype)
    return deltas


def gate_patch(config, strength: float):
    from unet_lab.unet_core.gates.skip_gate import SkipGatePatch, build_settings

    return SkipGatePatch(build_settings(config, strength, floor=0.1))


@dataclass
class Scenario:
    """What is active: LoRA strength (0: none) and gate strength (None: no gate)."""

    lora: float = 0.0
    gate: float | None = None
    cond_or_uncond: list[int] = field(default_factory=lambda: [1, 0])


class OurHost:
    """The pack's UNet in its standalone patcher."""

    name = "ours"

    def __init__(self, config, family: str, device, dtype) -> None:
        self.config = config
        self.base = our_patcher(config, family, device, dtype)
        self.deltas = lora_deltas(self.base.diffusion_model)
        self._gates: dict[float, Any] = {}

    @property
    def module(self) -> torch.nn.Module:
        return self.base.diffusion_model

    def _model(self, scenario: Scenario, base=None):
        model = (base or self.base).clone()
        if scenario.lora:
            model.add_patches({"diffusion_model." + k: (d,) for k, d in self.deltas.items()}, scenario.lora)
        if scenario.gate is not None:
            gate = self._gates.setdefault(scenario.gate, gate_patch(self.config, scenario.gate))
            model.set_model_output_block_patch(gate)
        return model

    def runner(self, scenario: Scenario, wrapper: Callable | None = None) -> Callable:
        base = None
        if wrapper is not None:
            from unet_lab.unet_core.acceleration.install import install_accelerator

            base = install_accelerator(self.base, wrapper)
        model = self._model(scenario, base)
        options = {"cond_or_uncond": list(scenario.cond_or_uncond)}
        return lambda x, t, c, y: model.apply_model(x, t, c, y, transformer_options=dict(options))

    def compiled_runner(self, scenario: Scenario) -> Callable:
        """torch.compile of the whole diffusion model (inductor), as core TorchCompileModel does."""
        compiled = torch.compile(self.module, dynamic=False)
        return self.runner(scenario, lambda executor, *a, **k: compiled(*a, **k))

    def reload(self) -> None:
        """Unload to the CPU and load back: every weight at a new address."""
        self.module.to("cpu")
        self.module.to(self.base.load_device)


class ComfyHost:
    """ComfyUI's UNet from a checkout, called as ComfyUI's BaseModel calls its diffusion_model."""

    name = "comfyui"

    def __init__(self, checkout: str, ours: OurHost, device, dtype) -> None:
        from bench_skip_gate import _comfy_unet

        self.config = ours.config
        self.unet = _comfy_unet(checkout, ours.config, device, dtype, ours.module.state_dict()).requires_grad_(False)
        self.device = device
        self.originals = {k: v for k, v in self.unet.named_parameters()}
        self.deltas = ours.deltas
        self._gates: dict[float, Any] = {}
        self._lora = 0.0

    @property
    def module(self) -> torch.nn.Module:
        return self.unet

    def set_lora(self, strength: float) -> None:
        """Patch the weights as ComfyUI's ModelPatcher does at load: each patched weight a new Parameter."""
        if strength == self._lora:
            return
        for name, original in self.originals.items():
            owner, _, leaf = name.rpartition(".")
            module = self.unet.get_submodule(owner)
            delta = self.deltas.get(name)
            value = original if (delta is None or not strength) else torch.nn.Parameter(
                (original.float() + strength * delta.float()).to(original.dtype), requires_grad=False)
            module._parameters[leaf] = value
        self._lora = strength

    def runner(self, scenario: Scenario, wrapper: Callable | None = None) -> Callable:
        options: dict[str, Any] = {"cond_or_uncond": list(scenario.cond_or_uncond)}
        if scenario.gate is not None:
            gate = self._gates.setdefault(scenario.gate, gate_patch(self.config, scenario.gate))
            options["patches"] = {"output_block_patch": [gate]}
        if wrapper is not None:
            options["wrappers"] = {"diffusion_model": {"unet_lab.accelerate_unet": [wrapper]}}
        unet, lora = self.unet, scenario.lora

        def run(x, t, c, y):
            self.set_lora(lora)
            opts = dict(options, sigmas=t)
            return unet(x, t, context=c, y=y, control=None, transformer_options=opts)

        return run

    def compiled_runner(self, scenario: Scenario) -> Callable:
        """Core TorchCompileModel (inductor): the compiled diffusion_model called in place of the module."""
        return self._bind_compiled(scenario, torch.compile(self.unet, dynamic=False))

    def _bind_compiled(self, scenario: Scenario, compiled) -> Callable:
        options: dict[str, Any] = {"cond_or_uncond": list(scenario.cond_or_uncond)}
        if scenario.gate is not None:
            gate = self._gates.setdefault(scenario.gate, gate_patch(self.config, scenario.gate))
            options["patches"] = {"output_block_patch": [gate]}
        lora = scenario.lora

        def run(x, t, c, y):
            self.set_lora(lora)
            return compiled(x, t, context=c, y=y, control=None, transformer_options=dict(options, sigmas=t))

        return run

    def reload(self) -> None:
        """Unload to the CPU and load back (unpatched first, as ComfyUI restores its backups)."""
        self.set_lora(0.0)
        self.unet.to("cpu")
        self.unet.to(self.device)
        self.originals = {k: v for k, v in self.unet.named_parameters()}


def accelerator(compile: bool = False, max_graphs: int = 8):
    from unet_lab.unet_core.acceleration.accelerator import AccelerationSettings, Accelerator

    return Accelerator(AccelerationSettings(compile=compile, max_graphs=max_graphs))
