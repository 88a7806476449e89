"""Runs ``interpreted_fused_gate.py`` (the fused skip gate in Triton's CPU interpreter) in its own
pytest process: Triton decides on interpretation when it is first imported, which in this
process may already have happened (torch and diffusers import it on their own)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from pack_support import REPO_ROOT


def test_fused_gate_kernels_in_the_triton_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(REPO_ROOT / "tests" / "interpreted_fused_gate.py")],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def test_fused_path_is_refused_where_it_would_be_wrong():
    """No fused kernel where autograd needs a graph, under tracing, or on other layouts/devices."""
    from unet_lab.unet_core.gates.fused_gate import fused_usable, tensors_allow_fusion

    h, hsp = torch.randn(2, 8, 4, 4), torch.randn(2, 4, 4, 4)
    assert tensors_allow_fusion(h, hsp)
    assert not fused_usable(h, hsp)  # CPU tensors: the eager path
    assert not tensors_allow_fusion(h, hsp.contiguous(memory_format=torch.channels_last))
    assert not tensors_allow_fusion(h, hsp.transpose(2, 3))
    trainable = hsp.clone().requires_grad_(True)
    assert not tensors_allow_fusion(h, trainable)
    with torch.no_grad():
        assert tensors_allow_fusion(h, trainable)  # no graph is built: fusing loses nothing
