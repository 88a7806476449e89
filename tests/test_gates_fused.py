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


def test_kept_launch_binds_everything_but_the_kernel_arguments(monkeypatch):
    """A kept launch on a stream is Triton's C launch function (or the launcher) with the grid,
    stream, function and metadata bound in the order the runner passes them; the call adds only
    the kernel's arguments."""
    from unet_lab.unet_core.gates import fused_gate

    pytest.importorskip("triton")
    calls = []

    class Launcher:  # ``CompiledKernel.run``: callable, with the C function as ``launch``
        global_scratch_size = profile_scratch_size = 0
        launch_cooperative_grid, launch_pdl = True, False

        def __call__(self, *args):
            calls.append(("launcher", args))

        def launch(self, *args):
            calls.append(("c", args))

    class Compiled:
        function, run, packed_metadata = "fn", Launcher(), "meta"

        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append(("runner", args, kwargs))

    monkeypatch.setattr(fused_gate, "_no_launch_hooks", lambda: True)
    monkeypatch.setattr(fused_gate, "_triton_minor", lambda: (3, 6))
    on_stream, direct = fused_gate._kept_launch(Compiled(), (2, 3, 1))
    on_stream(77)(10, 20, 30)
    assert direct and calls == [("c", (2, 3, 1, 77, "fn", True, False, None, None, "meta", None, None, None, 10, 20, 30))]
    calls.clear()
    monkeypatch.setattr(fused_gate, "_triton_minor", lambda: (3, 9))  # no C-level call: the launcher
    on_stream, direct = fused_gate._kept_launch(Compiled(), (2, 3, 1))
    on_stream(5)(10, 20)
    assert direct and calls == [("launcher", (2, 3, 1, 5, "fn", "meta", None, None, None, 10, 20))]
    calls.clear()
    on_stream, direct = fused_gate._kept_launch(Compiled(), (2, 3, 1), direct=False)  # Triton's runner
    on_stream(5)(10, 20)
    assert not direct and calls == [("runner", (10, 20), {"stream": 5})]


def test_kept_launches_get_the_bound_calls_arguments_as_pointers(monkeypatch):
    """After a case's first call (through Triton's binding, with tensors), its lane launches with
    plain pointers: the same argument list, in the same order, as ``_tensor_args`` gives that
    binding, with the constant tail the plan picked; the output is a fresh alias every call."""
    from unet_lab.unet_core.gates import fused_gate

    pytest.importorskip("triton")
    recorded = []

    def first_launch(plan, make_args, out, stream):
        recorded.append(("bound", fused_gate._as_pointers(make_args(out))))
        plan.launches = [(lambda stream: (lambda *args: recorded.append(("kept", args))), ("values", 1))]

    monkeypatch.setattr(fused_gate, "_first_launch", first_launch)
    monkeypatch.setattr(fused_gate, "load_kernels", lambda fresh=False: None)
    monkeypatch.setattr(fused_gate, "_state", dict(fused_gate._state, plans={}))
    gate = fused_gate.FusedSkipGate(1.5, 1e-5)
    h, hsp = torch.randn(2, 8, 4, 4), torch.randn(2, 4, 4, 4)
    for want_alpha, concat in ((False, True), (True, False)):
        recorded.clear()
        first, alpha = gate(h, hsp, (0.5, 0.0), want_alpha, concat)
        second, alpha2 = gate(h, hsp, (0.5, 0.0), want_alpha, concat)
        assert [kind for kind, _ in recorded] == ["bound", "kept"]
        bound, kept = recorded[0][1], recorded[1][1]
        assert kept[-2:] == ("values", 1) and len(kept) == len(bound) + 2
        # the same pointers, but for the output (and alpha): the second call's own tensors
        changes = {2: second.data_ptr() + (h.shape[1] * second.stride(1) * 4 if concat else 0)}
        changes[3] = second.data_ptr() if concat else bound[3]
        changes[4] = alpha2.data_ptr() if want_alpha else bound[4]
        assert kept[:-2] == tuple(changes.get(i, v) for i, v in enumerate(bound))
        assert bound[3] == (first.data_ptr() if concat else bound[5])  # unused pointers get the scratch


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
