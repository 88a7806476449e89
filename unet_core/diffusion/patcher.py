"""The standalone MODEL: a UNet plus ComfyUI's ``ModelPatcher`` subset that patch nodes use.

Names and semantics follow ComfyUI (``clone``, ``add_patches``, ``model_options``,
``set_model_*_patch``), so a patch node's code runs on either host. Running never
changes the UNet's own parameters as seen outside a run: patched weights are
computed on demand (cached per patch state) and swapped into the shared module
only for the duration of one forward pass, then the originals are put back. The
swap is a dictionary assignment per patched tensor, so a patched step runs the
same module code as an unpatched one (no re-parametrisation per call, as
``torch.func.functional_call`` would do). Like ComfyUI's own patcher, two clones
of one module must not run concurrently in different threads.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..state_dict_fit import fit_problems
from ..unet_config import UNetConfig
from .unet import UNetModel
from .weight_patch import calculate_weight
from .wrappers import DIFFUSION_MODEL, WrapperMethods, Wrappers, all_wrappers, copy_wrappers, run_wrapped

log = logging.getLogger(__name__)

PREFIX = "diffusion_model."
FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


class DiffusionModel(nn.Module):
    """Like ComfyUI's ``BaseModel``: holds ``diffusion_model`` so state-dict keys read ``diffusion_model.…``."""

    def __init__(self, unet: UNetModel, family: str | None = None, prediction: str | None = "epsilon",
                 spec: Any = None) -> None:
        super().__init__()
        self.diffusion_model = unet
        self.model_config: UNetConfig = unet.config
        self.unet_config: UNetConfig = unet.config
        self.family = family
        self.prediction = prediction if prediction in ("epsilon", "v_prediction") else "epsilon"
        self.spec = spec

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, c_crossattn: torch.Tensor | None = None,
                    y: torch.Tensor | None = None, transformer_options: dict | None = None,
                    **_: Any) -> torch.Tensor:
        return self.diffusion_model(x, t, c_crossattn, y=y, transformer_options=transformer_options)


def compute_dtype_for(weight_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype to compute in for weights stored as ``weight_dtype`` on ``device``."""
    if device.type == "cuda":
        if weight_dtype in FP8_DTYPES:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return weight_dtype
    if weight_dtype in (torch.float32, torch.bfloat16, torch.float64):
        return weight_dtype
    return torch.float32  # fp16 / fp8 storage on CPU: compute in fp32


def _merge_options(base: dict, extra: dict | None) -> dict:
    """Transformer options for one call: the model's, then the caller's (patch lists appended)."""
    merged = dict(base)
    if not extra:
        return merged
    for key, value in extra.items():
        if key == "patches":
            patches = {k: list(v) for k, v in merged.get("patches", {}).items()}
            for name, fns in value.items():
                patches[name] = patches.get(name, []) + list(fns)
            merged["patches"] = patches
        elif key == "patches_replace":
            replace = {k: dict(v) for k, v in merged.get("patches_replace", {}).items()}
            for name, table in value.items():
                replace.setdefault(name, {}).update(table)
            merged["patches_replace"] = replace
        else:
            merged[key] = value
    return merged


class UNetPatcher(WrapperMethods):
    """ComfyUI ``ModelPatcher`` subset over a :class:`DiffusionModel`."""

    def __init__(self, model: DiffusionModel, load_device: torch.device | str = "cpu",
                 offload_device: torch.device | str = "cpu") -> None:
        self.model = model
        self.load_device = torch.device(load_device)
        self.offload_device = torch.device(offload_device)
        self.patches: dict[str, list[tuple]] = {}
        self.patches_uuid = uuid.uuid4()
        self.model_options: dict[str, Any] = {"transformer_options": {}}
        self.wrappers: Wrappers = {}  # ComfyUI's ModelPatcher.wrappers: {type: {key: [fn, ...]}}
        self._cache_uuid: uuid.UUID | None = None
        self._cache: dict[str, torch.Tensor] = {}
        self._slots: list[tuple[dict, str]] = []  # where each patched weight goes in the shared module
        self._slots_uuid: uuid.UUID | None = None

    # -- identity ------------------------------------------------------------------
    @property
    def diffusion_model(self) -> UNetModel:
        return self.model.diffusion_model

    @property
    def family(self) -> str | None:
        """"sd1", "sd2", "sdxl", "*_inpaint", or None for a custom / reduced config."""
        return self.model.family

    @property
    def config(self) -> UNetConfig:
        return self.model.unet_config

    def model_dtype(self) -> torch.dtype:
        return next(self.diffusion_model.parameters()).dtype

    def model_size(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.diffusion_model.state_dict().values())

    def clone(self) -> UNetPatcher:
        """A new patcher sharing the module and its weights, with its own patches and options."""
        n = UNetPatcher(self.model, self.load_device, self.offload_device)
        n.patches = {k: list(v) for k, v in self.patches.items()}
        n.patches_uuid = self.patches_uuid
        n.model_options = copy.deepcopy(self.model_options)
        n.wrappers = copy_wrappers(self.wrappers)
        return n

    def is_clone(self, other: Any) -> bool:
        return getattr(other, "model", None) is self.model

    # -- weight patches ------------------------------------------------------------
    def model_state_dict(self, filter_prefix: str | None = None) -> dict[str, torch.Tensor]:
        sd = self.model.state_dict()
        if filter_prefix is not None:
            sd = {k: v for k, v in sd.items() if k.startswith(filter_prefix)}
        return sd

    def add_patches(self, patches: dict[Any, Any], strength_patch: float = 1.0,
                    strength_model: float = 1.0) -> list[Any]:
        """Queue weight patches; keys absent from the model are skipped. Returns the keys taken."""
        model_keys = set(self.model.state_dict().keys())
        taken = []
        for k, patch in patches.items():
            offset = function = None
            if isinstance(k, str):
                key = k
            else:
                key, offset = k[0], k[1]
                if len(k) > 2:
                    function = k[2]
            if key in model_keys:
                taken.append(k)
                self.patches.setdefault(key, []).append((strength_patch, patch, strength_model, offset, function))
        self.patches_uuid = uuid.uuid4()
        return taken

    def with_unet_weights(self, state_dict: dict[str, torch.Tensor]) -> UNetPatcher:
        """A clone whose UNet weights are ``state_dict``'s (bare LDM keys), as ComfyUI "set" patches.

        The "set" entries go first in each key's list, so patches already on the MODEL
        (a LoRA…) apply on top of the new weights. The shared module is never written.
        """
        n = self.clone()
        model_keys = set(self.model.state_dict().keys())
        for k, t in state_dict.items():
            key = PREFIX + k
            if key not in model_keys:
                raise InputError(f"Swap UNet: {k} is not a weight of this model")
            n.patches[key] = [(1.0, ("set", (t,)), 1.0, None, None)] + list(n.patches.get(key, []))
        n.patches_uuid = uuid.uuid4()
        return n

    def get_key_patches(self, filter_prefix: str | None = None) -> dict[str, list]:
        """Model key -> [(weight,), *patches], as ComfyUI returns it."""
        out = {}
        for k, v in self.model_state_dict(filter_prefix).items():
            out[k] = [(v,)] + list(self.patches.get(k, []))
        return out

    def _patched_weight(self, key: str, weight: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        work = weight.to(dtype=torch.float32, copy=True)
        return calculate_weight(self.patches[key], work, key, original_weight=weight).to(out_dtype)

    def patched_weights(self) -> dict[str, torch.Tensor]:
        """Bare LDM key -> patched weight (only the patched keys), cached per patch state."""
        if self._cache_uuid == self.patches_uuid:
            return self._cache
        self._cache = {}
        self._cache_uuid = None
        unet_sd = self.diffusion_model.state_dict()
        compute = self.diffusion_model.dtype
        for key in self.patches:
            bare = key[len(PREFIX):] if key.startswith(PREFIX) else key
            weight = unet_sd.get(bare)
            if weight is None:
                continue
            dtype = compute if weight.dtype in FP8_DTYPES else weight.dtype
            self._cache[bare] = self._patched_weight(key, weight, dtype)
        self._cache_uuid = self.patches_uuid
        return self._cache

    def baked_state_dict(self) -> dict[str, torch.Tensor]:
        """Canonical bare-LDM weights with every weight patch merged (original dtypes)."""
        sd = dict(self.diffusion_model.state_dict())
        for key in self.patches:
            bare = key[len(PREFIX):] if key.startswith(PREFIX) else key
            if bare in sd:
                sd[bare] = self._patched_weight(key, sd[bare], sd[bare].dtype)
        return sd

    # -- transformer-option patches (ComfyUI names) -----------------------------------
    def set_model_patch(self, patch: Callable, name: str) -> None:
        to = self.model_options["transformer_options"]
        patches = to.setdefault("patches", {})
        patches[name] = patches.get(name, []) + [patch]

    def set_model_patch_replace(self, patch: Callable, name: str, block_name: str, number: int,
                                transformer_index: int | None = None) -> None:
        to = self.model_options["transformer_options"]
        replace = to.setdefault("patches_replace", {})
        table = dict(replace.get(name, {}))
        block = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
        table[block] = patch
        replace[name] = table

    def set_model_attn1_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn1_output_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "attn1_output_patch")

    def set_model_attn2_output_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "attn2_output_patch")

    def set_model_attn1_replace(self, patch: Callable, block_name: str, number: int,
                                transformer_index: int | None = None) -> None:
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn2_replace(self, patch: Callable, block_name: str, number: int,
                                transformer_index: int | None = None) -> None:
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def set_model_input_block_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "input_block_patch")

    def set_model_input_block_patch_after_skip(self, patch: Callable) -> None:
        self.set_model_patch(patch, "input_block_patch_after_skip")

    def set_model_middle_block_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "middle_block_patch")

    def set_model_output_block_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "output_block_patch")

    def set_model_unet_function_wrapper(self, fn: Callable) -> None:
        """``fn(apply_model, {"input", "timestep", "c", "cond_or_uncond"})`` wraps each call."""
        self.model_options["model_function_wrapper"] = fn

    # -- running -------------------------------------------------------------------
    def _run(self, x: torch.Tensor, t: torch.Tensor, c_crossattn: torch.Tensor | None = None,
             y: torch.Tensor | None = None, transformer_options: dict | None = None,
             **_: Any) -> torch.Tensor:
        weights = self.patched_weights()
        if self._slots_uuid != self._cache_uuid:
            self._slots = _parameter_slots(self.diffusion_model, weights)
            self._slots_uuid = self._cache_uuid
        wrappers = all_wrappers(self.wrappers, DIFFUSION_MODEL)
        with _swapped_tensors(self._slots, list(weights.values())):
            return run_wrapped(self.diffusion_model.forward, self.diffusion_model, wrappers,
                               x, t, c_crossattn, y=y, transformer_options=transformer_options)

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                    y: torch.Tensor | None = None, transformer_options: dict | None = None) -> torch.Tensor:
        """Run the UNet with this patcher's weight patches and model options.

        ``t`` are the UNet's timesteps (0..999), not sigmas. The call's
        ``transformer_options`` are merged over ``model_options["transformer_options"]``.
        """
        device = self.load_device
        if not _same_device(x.device, device):
            raise InputError(f"UNet input is on {x.device}, the model runs on {device}")
        options = _merge_options(self.model_options.get("transformer_options", {}), transformer_options)
        wrapper = self.model_options.get("model_function_wrapper")
        if wrapper is not None:
            return wrapper(self._run, {"input": x, "timestep": t,
                                       "c": {"c_crossattn": context, "y": y, "transformer_options": options},
                                       "cond_or_uncond": options.get("cond_or_uncond", [])})
        return self._run(x, t, context, y=y, transformer_options=options)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` are the same device when 0 is the current one."""
    if a.type != b.type:
        return False
    if a.type != "cuda" or a.index == b.index:
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def _parameter_slots(module: nn.Module, names: Iterable[str]) -> list[tuple[dict, str]]:
    """For each parameter name, the dictionary that holds it in ``module`` and its key there."""
    slots = []
    for name in names:
        owner_path, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_path) if owner_path else module
        slots.append((owner._parameters if leaf in owner._parameters else owner._buffers, leaf))
    return slots


@contextlib.contextmanager
def _swapped_tensors(slots: list[tuple[dict, str]], tensors: list[torch.Tensor]) -> Iterator[None]:
    """Put ``tensors`` into their ``slots`` for the block, then put the originals back."""
    originals = [table[leaf] for table, leaf in slots]
    try:
        for (table, leaf), tensor in zip(slots, tensors, strict=True):
            table[leaf] = tensor
        yield
    finally:
        for (table, leaf), original in zip(slots, originals, strict=True):
            table[leaf] = original


def _check_keys(unet: nn.Module, state_dict: dict[str, torch.Tensor], where: Any) -> None:
    problems = fit_problems(unet, state_dict)
    if problems:
        raise CheckpointError(where, "the UNet weights do not fit the detected config: " + "; ".join(problems))


def build_unet(state_dict: dict[str, torch.Tensor], config: UNetConfig,
               weight_dtype: torch.dtype | None = None, device: torch.device | str = "cpu",
               where: Any = None) -> UNetModel:
    """A UNet built on the meta device and filled from ``state_dict`` (strict, no double allocation)."""
    with torch.device("meta"):
        unet = UNetModel(config)
    _check_keys(unet, state_dict, where)
    device = torch.device(device)
    tensors = {}
    for k, v in state_dict.items():
        target = weight_dtype if (weight_dtype is not None and v.is_floating_point()) else v.dtype
        tensors[k] = v.to(device=device, dtype=target)
    unet.load_state_dict(tensors, strict=True, assign=True)
    unet.requires_grad_(False)
    unet.eval()
    dtypes = [p.dtype for p in unet.parameters()]
    storage = max(set(dtypes), key=dtypes.count)
    unet.dtype = compute_dtype_for(storage, device)
    return unet


def create_model_patcher(state_dict: dict[str, torch.Tensor], spec: Any,
                         weight_dtype: torch.dtype | None = None,
                         load_device: torch.device | str = "cpu",
                         offload_device: torch.device | str = "cpu") -> UNetPatcher:
    """A :class:`UNetPatcher` from a canonical bare-LDM state dict and its spec.

    ``spec`` needs ``config`` (a :class:`UNetConfig`); ``family``, ``prediction`` and
    ``path`` are used when present.
    """
    config = getattr(spec, "config", None)
    if not isinstance(config, UNetConfig):
        raise CheckpointError(getattr(spec, "path", None), "no UNet config was detected for these weights")
    unet = build_unet(state_dict, config, weight_dtype, load_device, getattr(spec, "path", None))
    model = DiffusionModel(unet, getattr(spec, "family", None) or None,
                           getattr(spec, "prediction", None), spec)
    return UNetPatcher(model, load_device, offload_device)


WEIGHT_DTYPE_NAMES: dict[str, torch.dtype | None] = {
    "default": None, "keep": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
    **{name: getattr(torch, "float8_" + name[4:]) for name in ("fp8_e4m3fn", "fp8_e5m2")
       if hasattr(torch, "float8_" + name[4:])},
}


def weight_dtype_from_name(name: str) -> torch.dtype | None:
    """The torch dtype of a node's dtype choice ("default"/"keep" -> None)."""
    if name not in WEIGHT_DTYPE_NAMES:
        raise InputError(f"unknown weight dtype {name!r}; choose one of {', '.join(WEIGHT_DTYPE_NAMES)}")
    return WEIGHT_DTYPE_NAMES[name]


def cast_state_dict(sd: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """``sd`` with floating tensors cast to ``dtype`` (unchanged when None)."""
    if dtype is None:
        return dict(sd)
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
