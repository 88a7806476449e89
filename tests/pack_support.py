"""Shared test helpers: where the repository is, and loading the pack under one name."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "unet_lab"


def load_pack(name: str = PACK_NAME, run_init: bool = True):
    """Import the pack from its ``__init__.py`` under ``name`` (as ComfyUI does).

    ``run_init=False`` only registers the package, so ``unet_core`` imports without loading
    every node module (the benchmarks use it).
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if run_init:
        spec.loader.exec_module(module)
    return module


def load_script(relative_path: str):
    """A repository script (``scripts/...py``, ``benchmarks/...py``) imported as a module, named after its file."""
    path = REPO_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def node_result(output):
    """A node function's outputs as a tuple, whether it returned a tuple or ``{"ui": ..., "result": ...}``."""
    if isinstance(output, dict):
        return tuple(output["result"])
    return tuple(output)


def run_in_triton_interpreter(test_file: str) -> None:
    """Run ``tests/<test_file>`` in its own pytest process under ``TRITON_INTERPRET=1`` and require
    that it passed with nothing skipped (Triton decides on interpretation when it is first
    imported, which in this process may already have happened: torch and diffusers import it)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(REPO_ROOT / "tests" / test_file)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
