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

    pytest.importorskip("triton")
    recorded = []
    gate = _fake_launch_gate(monkeypatch, recorded, one_launch=False)
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


def _fake_launch_gate(monkeypatch, recorded: list, one_launch: bool = True):
    """A FusedSkipGate on CPU whose first call records the bound call's pointers and whose kept
    launch records its own in place of running a kernel. ``one_launch``: its cases plan one launch
    (a spare output), as on an H200, and CPU tensors pass for CUDA ones in ``fused_usable`` (every
    other condition of it still holds)."""
    from unet_lab.unet_core.gates import fused_gate

    def first_launch(plan, make_args, out, stream):
        recorded.append(("bound", fused_gate._as_pointers(make_args(out))))
        plan.launches = [(lambda stream: (lambda *args: recorded.append(("kept", args))), ("values", 1))]

    monkeypatch.setattr(fused_gate, "_first_launch", first_launch)
    monkeypatch.setattr(fused_gate, "load_kernels", lambda fresh=False: None)
    monkeypatch.setattr(fused_gate, "_state", dict(fused_gate._state, plans={}, one_gpu=True, failed=False))
    if one_launch:
        monkeypatch.setattr(fused_gate, "_multiprocessors", lambda device_index: 132)
        monkeypatch.setattr(fused_gate, "fused_usable", lambda h, hsp: not fused_gate._state["failed"]
                            and fused_gate._on_current_device(hsp) and fused_gate.tensors_allow_fusion(h, hsp))
    return fused_gate.FusedSkipGate(1.0, 1e-5)


@pytest.mark.parametrize("concat", [False, True])
def test_a_repeat_launches_what_the_full_call_would_into_the_free_spare(monkeypatch, concat):
    """``FusedSkipGate.again`` repeats a slot's last call: the same pointer list the kept launch
    of a full call gets (output in the spare), and the spare handed out as a fresh alias."""
    from unet_lab.unet_core.gates import fused_gate

    if fused_gate._storage_use_count is None:
        pytest.skip("this torch has no storage use count: no spare, so no repeat")
    recorded: list = []
    gate = _fake_launch_gate(monkeypatch, recorded)
    h, hsp = torch.randn(2, 8, 4, 4), torch.randn(2, 4, 4, 4)
    assert gate.again(3, h, hsp, None, concat) is None  # nothing to repeat yet
    first, _ = gate(h, hsp, (0.5, 0.5), False, concat, 3, None)
    spare_ptr = first.data_ptr()
    del first
    second, _ = gate(h, hsp, (0.5, 0.5), False, concat, 3, None)  # a full call with kept launches
    assert second.data_ptr() == spare_ptr
    del second
    repeat = gate.again(3, h, hsp, None, concat)
    assert repeat is not None and repeat.data_ptr() == spare_ptr
    assert repeat.shape == ((2, 12, 4, 4) if concat else hsp.shape)
    assert [kind for kind, _ in recorded] == ["bound", "kept", "kept"]
    assert recorded[2][1] == recorded[1][1]  # the same tensors, the same spare: the same arguments
    assert gate.again(3, h, hsp, None, concat) is None  # ``repeat`` still holds the spare
    view = repeat[:, :1]
    del repeat
    assert gate.again(3, h, hsp, None, concat) is None  # so does a view of it
    del view
    assert gate.again(3, h, hsp, None, concat) is not None


def test_a_repeat_is_refused_where_anything_the_case_depends_on_changed(monkeypatch):
    """Every condition the full call checks per case or per call, the repeat checks against the
    slot's last call: tag, output kind, layouts, dtypes, alignment, gradients, the failed switch."""
    from unet_lab.unet_core.gates import fused_gate

    if fused_gate._storage_use_count is None:
        pytest.skip("this torch has no storage use count: no spare, so no repeat")
    recorded: list = []
    gate = _fake_launch_gate(monkeypatch, recorded)
    h, hsp = torch.randn(2, 8, 4, 4), torch.randn(2, 4, 4, 4)
    gate(h, hsp, (0.5, 0.5), False, False, 3, (1, 0))
    assert gate(h, hsp, (0.5, 0.5), True, False, 4, None) is not None  # alpha wanted: no repeat kept
    count = len(recorded)

    def refused(slot=3, g=h, x=hsp, tag=(1, 0), concat=False):
        return gate.again(slot, g, x, tag, concat) is None

    assert not refused()
    assert len(recorded) == count + 1
    unaligned = torch.randn(2 * 4 * 16 + 1)[1:].view(2, 4, 4, 4)
    assert refused(slot=4) and refused(slot=5) and refused(tag=(0, 1)) and refused(tag=None) and refused(concat=True)
    assert refused(x=hsp.contiguous(memory_format=torch.channels_last)) and refused(x=hsp.half())
    assert refused(g=torch.randn(2, 6, 4, 4)) and refused(x=torch.randn(4, 4, 4, 4)) and refused(x=unaligned)
    assert refused(x=hsp.clone().requires_grad_(True))
    monkeypatch.setitem(fused_gate._state, "failed", True)
    assert refused()
    assert len(recorded) == count + 1  # no refused repeat launched anything


def test_patch_repeats_a_blocks_fused_call_with_its_pass_choice_as_tag(monkeypatch):
    """The patch tries the block's repeat first, with the tag its rows follow from (None for both
    passes, the cond/uncond order otherwise), and makes the full call when the repeat is refused."""
    from unet_lab.unet_core.diffusion.config import SD1_CONFIG
    from unet_lab.unet_core.gates import skip_gate

    calls = []
    out = torch.zeros(2, 4, 4, 4)

    class Fused:
        def again(self, slot, h, hsp, tag, concat):
            calls.append(("again", slot, tag, concat))
            return out if len(calls) > 2 else None

        def __call__(self, h, hsp, rows, want_alpha, concat, slot, tag):
            calls.append(("full", slot, tag, rows))
            return out, None

    monkeypatch.setattr(skip_gate, "fused_usable", lambda h, hsp: True)
    h, hsp = torch.randn(2, 8, 4, 4), torch.randn(2, 4, 4, 4)
    options = {"block": ("output", 3), "cond_or_uncond": [1, 0]}
    for apply_to, tag, rows in (("both", None, (0.45, 0.45)), ("cond", (1, 0), (0.0, 0.45))):
        calls.clear()
        patch = skip_gate.SkipGatePatch(skip_gate.build_settings(SD1_CONFIG, 0.5, floor=0.1, apply_to=apply_to))
        patch._fused_gate = Fused()
        assert patch(h, hsp, options)[1] is out
        assert patch(h, hsp, options)[1] is out
        assert calls[:3] == [("again", 3, tag, False), ("full", 3, tag, pytest.approx(rows)), ("again", 3, tag, False)]
        assert len(calls) == 3  # the second call was the repeat alone
