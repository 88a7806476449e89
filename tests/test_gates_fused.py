"""Runs ``interpreted_fused_gate.py`` (the fused skip gate in Triton's CPU interpreter) in its own
pytest process: Triton decides on interpretation when it is first imported, which in this
process may already have happened (torch and diffusers import it on their own)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pack_support import REPO_ROOT

pytest.importorskip("triton")


def test_fused_gate_kernels_in_the_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(REPO_ROOT / "tests" / "interpreted_fused_gate.py")],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
