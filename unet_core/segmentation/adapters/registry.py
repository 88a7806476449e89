"""The registry of checkpoint adapters: readers of segmentation weights in other projects' formats.

Each adapter module registers one :class:`CheckpointAdapter` when it is imported
(``register_adapter``). :func:`registered_adapters` imports the built-in adapter modules by name
on first use, so this module imports none of them and the checkpoint reader depends on this
registry only (no import circle between the reader and the adapters).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

BUILTIN_ADAPTERS: tuple[str, ...] = (".milesial", ".smp", ".unet3plus_authors", ".pytorch3dunet", ".monai3d")

# read_state_dict(tensors, extras, where) -> (model, meta), or None when the tensors are not this format;
# it may drop entries of ``tensors`` it ignores (auxiliary heads) and raises SegmentationError when the
# format is its own but the content does not fit
StateDictReader = Callable[[dict[str, torch.Tensor], dict[str, Any], str], tuple[Any, Any] | None]
# read_folder(folder) -> (model, meta), or None when the folder is not this format
FolderReader = Callable[[Path], tuple[Any, Any] | None]


@dataclass(frozen=True)
class CheckpointAdapter:
    """One foreign format: its name, what its files look like (for error messages) and its readers."""

    name: str
    expects: str
    read_state_dict: StateDictReader | None = None
    read_folder: FolderReader | None = None


_ADAPTERS: dict[str, CheckpointAdapter] = {}
_LOCK = threading.Lock()
_loaded = False


def register_adapter(adapter: CheckpointAdapter) -> CheckpointAdapter:
    """Add ``adapter`` (replacing one of the same name); returns it."""
    with _LOCK:
        _ADAPTERS[adapter.name] = adapter
    return adapter


def registered_adapters() -> tuple[CheckpointAdapter, ...]:
    """Every registered adapter, built-in ones first (in ``BUILTIN_ADAPTERS`` order)."""
    global _loaded
    if not _loaded:
        for name in BUILTIN_ADAPTERS:
            importlib.import_module(name, __package__)
        _loaded = True
    with _LOCK:
        return tuple(_ADAPTERS.values())
