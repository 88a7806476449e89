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


def test_spare_output_is_written_again_only_when_nothing_holds_it():
    """The fused gate's output buffer on launch-bound maps: handed out as an alias, and reused only
    once no alias of it, nor any view of one, is alive (``FusedSkipGate._output``)."""
    from types import SimpleNamespace

    from unet_lab.unet_core.gates import fused_gate

    if fused_gate._storage_use_count is None:
        pytest.skip("this torch has no storage use count: every call allocates")
    output = fused_gate.FusedSkipGate._output
    hsp = torch.randn(2, 4, 3, 5).contiguous(memory_format=torch.channels_last)
    lane = SimpleNamespace(spare=None)
    first = output(lane, hsp.shape, hsp.stride(), hsp, True)
    assert first.shape == hsp.shape and first.stride() == hsp.stride() and first.dtype == hsp.dtype
    held = first.data_ptr()
    second = output(lane, hsp.shape, hsp.stride(), hsp, True)  # ``first`` is still alive: a fresh buffer
    assert second.data_ptr() != held
    spare = lane.spare[0]
    assert second.data_ptr() == spare.data_ptr()  # the fresh one became the spare
    view = second[:, :2]  # a view outliving its tensor still holds the buffer
    del first, second
    third = output(lane, hsp.shape, hsp.stride(), hsp, True)
    assert third.data_ptr() != spare.data_ptr()
    spare = lane.spare[0]
    del third, view
    assert output(lane, hsp.shape, hsp.stride(), hsp, True).data_ptr() == spare.data_ptr()  # nothing held it: reused
    with torch.inference_mode():  # views of inference tensors keep no base, but they do hold the storage
        lane = SimpleNamespace(spare=None)
        kept = output(lane, hsp.shape, hsp.stride(), hsp, True)
        view = kept[0]
        del kept
        assert output(lane, hsp.shape, hsp.stride(), hsp, True).data_ptr() != view.data_ptr()


def test_large_maps_get_a_fresh_output_every_call():
    from types import SimpleNamespace

    from unet_lab.unet_core.gates import fused_gate

    lane = SimpleNamespace(spare=None)
    hsp = torch.randn(1, 2, 4, 4)
    first = fused_gate.FusedSkipGate._output(lane, hsp.shape, hsp.stride(), hsp, False)
    assert lane.spare is None and first.shape == hsp.shape


def test_c_level_launch_only_where_its_argument_list_is_known(monkeypatch):
    """Triton's C launch function takes a different argument list from version to version (3.9
    passes the hooks and scratch in another order): the gate calls it straight only on the
    versions whose list it passes (3.5, 3.6), and only when ``run`` would allocate nothing."""
    from types import SimpleNamespace

    from unet_lab.unet_core.gates import fused_gate

    def launcher(**changes):
        fields = dict(launch=lambda *args: None, global_scratch_size=0, profile_scratch_size=0,
                      launch_cooperative_grid=True, launch_pdl=False)
        fields.update(changes)
        return SimpleNamespace(**{k: v for k, v in fields.items() if v is not None})

    pytest.importorskip("triton")
    installed = fused_gate._triton_minor()
    plain = launcher()
    assert (fused_gate._c_launch(plain) is plain.launch) == (installed in fused_gate._C_LAUNCH_TRITON)
    monkeypatch.setattr(fused_gate, "_triton_minor", lambda: (3, 6))
    assert fused_gate._c_launch(plain) is plain.launch
    assert fused_gate._c_launch(launcher(global_scratch_size=64)) is None  # run() would allocate it
    assert fused_gate._c_launch(launcher(profile_scratch_size=8)) is None
    assert fused_gate._c_launch(launcher(launch_pdl=None)) is None  # an older launcher's layout
    for version in ((3, 4), (3, 7), (3, 9), (4, 0)):
        monkeypatch.setattr(fused_gate, "_triton_minor", lambda version=version: version)
        assert fused_gate._c_launch(plain) is None


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
    assert all(c["joined_h_bitwise"] and c["joined_strides_as_cat"] and c["kept_launches_bitwise"] for c in cases)
    assert all(0 < c["eager_max_abs_diff"] <= c["eager_tolerance"] for c in cases)  # compared, and close
