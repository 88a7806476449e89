"""Make the pack importable as ``unet_lab`` for a benchmark script.

The package is registered without running its ``__init__`` (which imports every node
module): benchmarks need only ``unet_core``, and start faster without the rest.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pack_support import load_pack  # noqa: E402  (tests/ holds the one pack loader)


def load_core(name: str = "unet_lab") -> ModuleType:
    """Register the pack as package ``name`` (submodules import lazily); idempotent."""
    return load_pack(name, run_init=False)
