"""The standalone host: stub executor, headless runner and tests.

Model folders live under a models root (default ``./models``, or the
``UNET_LAB_MODELS`` environment variable) with ComfyUI's sub-folder names.
Device: CUDA when present, else CPU. Progress: a terminal line.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import torch

from ...unet_core.memory import available_ram
from ...unet_core.progress import ProgressCallback
from .base import MODEL_EXTENSIONS, MODEL_FOLDERS, Host
from .paths import list_model_files, resolve_inside

log = logging.getLogger(__name__)

MODELS_ENV = "UNET_LAB_MODELS"
OUTPUT_ENV = "UNET_LAB_OUTPUT"
INPUT_ENV = "UNET_LAB_INPUT"


class TerminalProgress:
    """A tqdm-style line on a TTY, a log line every 10% elsewhere."""

    def __init__(self, total: int, label: str = "", stream: Any = None) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self._last_decile = -1

    def __call__(self, done: int, total: int | None = None, message: str = "") -> None:
        if total:
            self.total = max(int(total), 1)
        done = min(int(done), self.total)
        fraction = done / self.total
        elapsed = time.monotonic() - self.start
        text = f"{self.label} {done}/{self.total} [{elapsed:5.1f}s] {message}".strip()
        if self.tty:
            width = 24
            bar = "#" * int(fraction * width) + "-" * (width - int(fraction * width))
            end = "\n" if done >= self.total else ""
            self.stream.write(f"\r{self.label} |{bar}| {done}/{self.total} [{elapsed:5.1f}s] {message}\x1b[K{end}")
            self.stream.flush()
        else:
            decile = int(fraction * 10)
            if decile != self._last_decile:
                self._last_decile = decile
                log.info("%s", text)


class StandaloneHost(Host):
    """Runs nodes without ComfyUI."""

    name = "standalone"

    def __init__(self, models_root: str | Path | None = None, output_dir: str | Path | None = None,
                 input_dir: str | Path | None = None, device: str | torch.device | None = None,
                 show_progress: bool = True, temp_dir: str | Path | None = None) -> None:
        self.models_root = Path(models_root or os.environ.get(MODELS_ENV) or "models").absolute()
        self._output = Path(output_dir or os.environ.get(OUTPUT_ENV) or "output").absolute()
        self._input = Path(input_dir or os.environ.get(INPUT_ENV) or "input").absolute()
        self._temp = Path(temp_dir).absolute() if temp_dir else None
        self._temp_cleanup: weakref.finalize | None = None
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        self.show_progress = show_progress

    # -- folders -------------------------------------------------------------------
    def _roots(self, folder: str) -> list[Path]:
        if folder not in MODEL_FOLDERS:
            from ...unet_core.errors import HostError
            raise HostError(f"unknown model folder {folder!r}; known: {', '.join(MODEL_FOLDERS)}")
        return [self.models_root / name for name in MODEL_FOLDERS[folder]]

    def list_files(self, folder: str) -> list[str]:
        return list_model_files(self._roots(folder), MODEL_EXTENSIONS)

    def resolve(self, folder: str, name: str) -> Path:
        return resolve_inside(self._roots(folder), name, folder)

    def save_directory(self, folder: str) -> Path:
        path = self._roots(folder)[0]
        path.mkdir(parents=True, exist_ok=True)
        return path

    def output_directory(self) -> Path:
        self._output.mkdir(parents=True, exist_ok=True)
        return self._output

    def input_directory(self) -> Path:
        return self._input

    def temp_directory(self) -> Path:
        """The given temp folder, else this host's own fresh one, removed with the host or at exit."""
        if self._temp is None:
            self._temp = Path(tempfile.mkdtemp(prefix="unet_lab_temp_")).absolute()
            self._temp_cleanup = weakref.finalize(self, shutil.rmtree, str(self._temp), True)
        self._temp.mkdir(parents=True, exist_ok=True)
        return self._temp

    # -- device --------------------------------------------------------------------
    def device(self) -> torch.device:
        return self._device

    def offload_device(self) -> torch.device:
        return torch.device("cpu")

    def free_memory(self, device: torch.device | None = None) -> int:
        device = device or self._device
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            return int(free)
        return available_ram()

    def release_memory(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- progress ------------------------------------------------------------------
    def progress(self, total: int, node_id: str | None = None) -> ProgressCallback:
        if not self.show_progress:
            return lambda done, total=None, message="": None
        return TerminalProgress(total, label=f"[{node_id}]" if node_id else "")

    # -- models --------------------------------------------------------------------
    def model_from_unet_state_dict(self, state_dict: dict[str, torch.Tensor], spec: Any,
                                   weight_dtype: torch.dtype | None = None) -> Any:
        from ...unet_core.diffusion.patcher import create_model_patcher

        return create_model_patcher(state_dict, spec, weight_dtype=weight_dtype,
                                    load_device=self._device, offload_device=self.offload_device())

    # -- LoRA patches (unet_core.lora) ------------------------------------------------
    def bake_lora_patches(self, model: Any) -> Any:
        """A new MODEL whose UNet weights hold ``model``'s weight patches merged in.

        Unpatched tensors are shared with ``model`` (the patcher never mutates weights), so
        baking costs the memory of the patched tensors only; the input MODEL is unchanged.
        """
        import copy
        from types import SimpleNamespace

        from ...unet_core.diffusion.patcher import create_model_patcher

        inner = model.model
        spec = getattr(inner, "spec", None)
        if getattr(spec, "config", None) is None:
            spec = SimpleNamespace(config=inner.unet_config, family=inner.family,
                                   prediction=getattr(inner, "prediction", None), path=None)
        baked = create_model_patcher(model.baked_state_dict(), spec, load_device=model.load_device,
                                     offload_device=model.offload_device)
        baked.model_options = copy.deepcopy(model.model_options)
        return baked

    # -- diffusion MODEL (unet_core.diffusion) -------------------------------------------
    def model_info(self, model: Any) -> dict[str, Any]:
        """Family, config, dtypes and prediction of a standalone MODEL (a UNetPatcher)."""
        from ...unet_core.diffusion.patcher import UNetPatcher
        from ...unet_core.errors import InputError

        if not isinstance(model, UNetPatcher):
            raise InputError(f"expected a MODEL made by UNet Lab's standalone host, got {type(model).__name__}")
        unet = model.diffusion_model
        return {"family": model.model.family, "config": model.model.unet_config,
                "prediction": model.model.prediction, "weight_dtype": model.model_dtype(),
                "compute_dtype": unet.dtype, "patched_keys": len(model.patches),
                "params": sum(p.numel() for p in unet.parameters()), "host": self.name}

    def swap_unet(self, model: Any, state_dict: dict[str, torch.Tensor], spec: Any) -> Any:
        """A clone of ``model`` running ``state_dict``'s UNet weights, patches and options kept."""
        return model.with_unet_weights(state_dict)

    def unet_state_dict_for_saving(self, model: Any) -> dict[str, torch.Tensor]:
        """Bare-LDM UNet weights of ``model`` with every weight patch merged."""
        return model.baked_state_dict()
