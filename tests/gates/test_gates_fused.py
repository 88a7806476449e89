"""Runs ``interpreted_fused_gate.py`` (the fused skip gate in Triton's CPU interpreter) in its own
pytest process: Triton decides on interpretation when it is first imported, which in this
process may already have happened (torch and diffusers import it on their own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from pack_support import REPO_ROOT, run_in_triton_interpreter


def test_fused_gate_kernels_in_the_triton_interpreter():
    pytest.importorskip("triton")
    run_in_triton_interpreter("interpreted_fused_gate.py")


def test_fused_path_is_refused_where_it_would_be_wrong():
    """No fused kernel where autograd needs a graph, under tracing, or on other layouts/devices."""
    from unet_lab.unet_core.gates.fused_gate import fused_usable, pixel_flat, tensors_allow_fusion

    h, hsp = torch.randn(2, 8, 4, 4), torch.randn(2, 4, 4, 4)
    assert tensors_allow_fusion(h, hsp) and pixel_flat(hsp)
    assert not fused_usable(h, hsp)  # CPU tensors: the eager path
    # channels-last (what SD's transformer blocks return): the flat pixel index still addresses it
    assert pixel_flat(hsp.contiguous(memory_format=torch.channels_last))
    assert pixel_flat(torch.randn(2, 16, 4).transpose(1, 2).reshape(2, 4, 4, 4))
    assert pixel_flat(torch.randn(2, 4, 4, 8)[..., ::2])  # every other column: pixel stride 2
    assert not pixel_flat(hsp.transpose(2, 3))  # pixels no longer in row-major order
    assert not pixel_flat(torch.randn(2, 4, 4, 8)[..., :4])  # gaps between rows
    trainable = hsp.clone().requires_grad_(True)
    assert not tensors_allow_fusion(h, trainable)
    with torch.no_grad():
        assert tensors_allow_fusion(h, trainable)  # no graph is built: fusing loses nothing


class _RecordingKernel:
    """Stands in for the jitted kernel: ``kernel[grid](*args, **kwargs)`` records the launch, or
    raises ``error`` where one is given."""

    def __init__(self, error: Exception | None = None) -> None:
        self.launches: list[tuple] = []
        self.error = error

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            if self.error is not None:
                raise self.error
            self.launches.append((grid, args, kwargs))

        return run


def _with_kernel(monkeypatch, kernel: _RecordingKernel):
    from unet_lab.unet_core.gates import fused_gate

    monkeypatch.setattr(fused_gate, "_kernel", lambda: kernel)
    monkeypatch.setattr(fused_gate, "triton_available", lambda: True)
    return fused_gate


@pytest.mark.parametrize("concat", [False, True])
def test_each_call_launches_statistics_then_apply_with_the_plans_arguments(monkeypatch, concat):
    """Two public ``kernel[grid](...)`` launches per call (PHASE 1, then 2) with the same
    arguments: ``hsp``, ``h``, the gated output (with ``concat``: the channels after ``h``'s, and
    ``h``'s copy into the first ones), alpha or the scratch, the row coefficients, then the sizes
    and strides of the plan; every call gets fresh outputs."""
    kernel = _RecordingKernel()
    fused_gate = _with_kernel(monkeypatch, kernel)
    gate = fused_gate.FusedSkipGate(1.5, 1e-5)
    h = torch.randn(2, 8, 5, 7)
    hsp = torch.randn(2, 4, 5, 7).contiguous(memory_format=torch.channels_last)
    out, alpha = gate(h, hsp, (0.5, 0.0), True, concat)
    again, _ = gate(h, hsp, (0.5, 0.0), True, concat)
    assert again.data_ptr() != out.data_ptr() and gate.fused_cases == 1
    want_shape = (2, 12, 5, 7) if concat else hsp.shape
    assert out.shape == want_shape and out.stride() == (torch.cat([h, hsp], 1) if concat else hsp).stride()
    assert alpha.shape == (2, 1, 5, 7) and alpha.dtype == hsp.dtype
    first, second = kernel.launches[:2]
    assert len(kernel.launches) == 4 and first[0] == second[0] == (2, 3)  # 35 pixels: tiles of 16
    assert [launch[2]["PHASE"] for launch in kernel.launches] == [1, 2, 1, 2]
    assert first[1] == second[1] and {k: v for k, v in first[2].items() if k != "PHASE"} == \
        {k: v for k, v in second[2].items() if k != "PHASE"}
    x, g, gated, g_out, alpha_arg, scratch, coefficients, *scalars = first[1]
    assert x is hsp and g is h and alpha_arg is alpha
    if concat:
        assert gated.data_ptr() == out.data_ptr() + 8 * out.stride(1) * 4 and g_out is out
    else:
        assert gated is out and g_out is scratch
    assert coefficients.tolist() == [0.5, 0.0] and scratch.dtype == torch.float32
    so = out.stride()
    assert scalars == [4, 8, 35, 3, 2 * 2 * 35, *hsp.stride()[:2], hsp.stride(3), *h.stride()[:2], h.stride(3),
                       so[0], so[1], so[3], 1.5, 1e-5]
    assert scratch.numel() == 2 * 2 * 35 + 2 * 3 * 4  # energies, then four statistics per tile
    assert first[2]["WRITE_ALPHA"] is True and first[2]["COPY_G"] is concat


def test_a_failing_launch_falls_back_to_the_eager_gate_once_logged(monkeypatch, caplog):
    """A launch that raises: the patch returns the eager gate's output, the warning is logged once,
    and that case is not launched again."""
    import logging

    from unet_lab.unet_core.gates import skip_gate
    from unet_lab.unet_core.unet_config import SD1_CONFIG

    kernel = _RecordingKernel(RuntimeError("no launcher for this device\nsecond line"))
    _with_kernel(monkeypatch, kernel)
    tries = []
    real_getitem = _RecordingKernel.__getitem__
    monkeypatch.setattr(_RecordingKernel, "__getitem__", lambda self, grid: tries.append(grid) or real_getitem(self, grid))
    monkeypatch.setattr(skip_gate, "fused_usable", lambda h, hsp: True)
    settings = skip_gate.build_settings(SD1_CONFIG, 0.7, floor=0.1)
    fused, eager = skip_gate.SkipGatePatch(settings), skip_gate.SkipGatePatch(settings, fused=False)
    h, hsp = torch.randn(2, 8, 4, 4), torch.randn(2, 4, 4, 4)
    options = {"block": ("output", 3), "cond_or_uncond": [1, 0]}
    want = eager(h, hsp, dict(options))[1]
    with caplog.at_level(logging.DEBUG, logger="unet_lab.unet_core.gates.fused_gate"):
        for _ in range(3):
            got = fused(h, hsp, dict(options))[1]
            assert torch.equal(got, want)
        other = fused(h, torch.randn(2, 6, 4, 4), dict(options))  # another case fails too: not warned again
    assert other[1].shape == (2, 6, 4, 4)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no launcher for this device" in warnings[0].getMessage()
    assert "second line" not in warnings[0].getMessage()
    assert len(tries) == 2 and fused.fused_cases == 0  # once per case, then the eager gate


def test_cases_the_kernel_cannot_address_get_no_plan(monkeypatch):
    """No plan (the eager gate) for maps of other resolutions, non-float dtypes, pixels out of
    row-major order, a concatenation that would promote, rows not matching the batch, or the
    switch ``UNET_LAB_FUSED_GATE=0``."""
    kernel = _RecordingKernel()
    fused_gate = _with_kernel(monkeypatch, kernel)
    h, hsp = torch.randn(2, 8, 4, 4), torch.randn(2, 4, 4, 4)

    def plan(g=h, x=hsp, rows=(1.0, 1.0), concat=False):
        return fused_gate.plan_case(g, x, rows, False, concat)

    assert plan() is not None and plan(concat=True) is not None
    assert plan(g=torch.randn(2, 8, 2, 2)) is None and plan(x=hsp.to(torch.int32)) is None
    assert plan(x=hsp.transpose(2, 3)) is None and plan(g=h.half(), concat=True) is None
    assert plan(rows=(1.0,)) is None and plan(x=hsp[0]) is None
    monkeypatch.setenv("UNET_LAB_FUSED_GATE", "0")
    assert plan() is None
    assert fused_gate.fused_skip_gate(h, hsp, (1.0, 1.0), 1.0, 1e-5) is None and kernel.launches == []


def test_patch_gives_the_fused_gate_row_coefficients_and_the_concatenation_offer(monkeypatch):
    """Rows: ``k = c (1 - floor)`` for the chosen pass, 0 for the other; ``concat`` where the UNet
    offers to take the concatenation (then the patch hands back its two channel views)."""
    from unet_lab.unet_core.diffusion.skip_concat import SKIP_CONCATENATION
    from unet_lab.unet_core.gates import skip_gate
    from unet_lab.unet_core.unet_config import SD1_CONFIG

    calls = []
    h, hsp = torch.randn(2, 8, 4, 4), torch.randn(2, 4, 4, 4)

    class Fused:
        def __call__(self, h, hsp, rows, want_alpha, concat):
            calls.append((rows, want_alpha, concat))
            return (torch.cat([h, hsp], 1) if concat else hsp.clone()), None

    monkeypatch.setattr(skip_gate, "fused_usable", lambda h, hsp: True)
    for apply_to, rows in (("both", (0.45, 0.45)), ("cond", (0.0, 0.45))):
        patch = skip_gate.SkipGatePatch(skip_gate.build_settings(SD1_CONFIG, 0.5, floor=0.1, apply_to=apply_to))
        patch._fused_gate = Fused()
        calls.clear()
        patch(h, hsp, {"block": ("output", 3), "cond_or_uncond": [1, 0]})
        options = {"block": ("output", 3), "cond_or_uncond": [1, 0], SKIP_CONCATENATION: None}
        joined_h, joined_hsp = patch(h, hsp, options)
        assert calls == [(pytest.approx(rows), False, False), (pytest.approx(rows), False, True)]
        joined = options[SKIP_CONCATENATION][2]
        assert joined_h.data_ptr() == joined.data_ptr() and joined_hsp.shape == hsp.shape


def test_gpu_check_script_runs_its_checks_in_the_interpreter(tmp_path):
    """``benchmarks/check_skip_gate.py`` (the fused gate against the eager one, case by case, on the
    GPU machine) runs on CPU through Triton's interpreter, and its checks pass there."""
    pytest.importorskip("triton")
    out = tmp_path / "check.json"
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "check_skip_gate.py"), "--device", "cpu",
                             "--dtypes", "float16", "--json", str(out)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    cases = json.loads(out.read_text())["cases"]
    assert len(cases) == 6 and all(c["ok"] for c in cases)
    assert all(c["joined_h_bitwise"] and c["joined_strides_as_cat"] and c["repeated_calls_bitwise"] for c in cases)
    assert all(0 < c["eager_max_abs_diff"] <= c["eager_tolerance"] for c in cases)  # compared, and close


