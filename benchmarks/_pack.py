"""Make the pack importable as ``unet_lab`` for a benchmark script.

The package is registered without running its ``__init__`` (which imports every node
module): benchmarks need only ``unet_core``, and start faster without the rest.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_core(name: str = "unet_lab") -> ModuleType:
    """Register the pack as package ``name`` (submodules import lazily); idempotent."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    return module
