"""The fused (Triton) skip gate against the documented math, run in Triton's CPU interpreter.

The kernels are the same source that runs on CUDA; ``TRITON_INTERPRET=1`` executes them with
numpy on CPU tensors, so their indexing, masking, tiling and the combination of tile
statistics are checked here. Triton reads that variable when it is first imported, so this
file runs in its own pytest process, started by ``test_gates_fused.py`` (its name keeps the
main run from collecting it). On the GPU machine, ``benchmarks/bench_skip_gate.py``
compares the fused and eager paths on full-size SD1/SDXL UNets.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import pytest  # noqa: E402
import torch

from fixtures_gates import reference_applied, reference_energy_alpha, run, tiny_config, tiny_patcher, unet_inputs

pytest.importorskip("triton")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def interpreted():
    """The fused module, its kernel built for Triton's interpreter (this process set
    ``TRITON_INTERPRET=1`` before anything imported Triton)."""
    from triton.runtime.interpreter import InterpretedFunction

    from unet_lab.unet_core.gates import fused_gate

    assert isinstance(fused_gate._kernel(), InterpretedFunction)
    return fused_gate


def _features(batch, channels, height, width, seed, offset=0.0):
    """Features whose channel norm varies strongly over space (and sits on a large offset)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, channels, height, width, generator=gen)
    ramp = torch.linspace(0.2, 3.0, height * width).reshape(1, 1, height, width)
    return base * ramp + offset


def _reference(h, hsp, rows, sharpness):
    """float64 ``m * hsp`` and ``alpha``; a row coefficient ``k = c (1 - floor)`` is the map
    ``1 - c (1 - alpha')`` written with strength ``k`` and no floor."""
    alpha = reference_energy_alpha(h, hsp, sharpness)  # float64 [B,1,H,W]
    m = torch.stack([reference_applied(alpha[b], k, 0.0) for b, k in enumerate(rows)])
    return m * hsp.double(), alpha


@pytest.mark.parametrize("shape", [(4, 40, 72, 13, 11), (2, 33, 20, 64, 64), (1, 8, 8, 1, 5)])
def test_fused_gate_matches_the_math_fp32(interpreted, shape):
    batch, cx, cg, height, width = shape
    hsp = _features(batch, cx, height, width, 0, offset=3.0)
    h = _features(batch, cg, height, width, 1)
    rows = [0.7, 0.0, 0.35, 1.0][:batch]
    out, alpha = interpreted.fused_skip_gate(h, hsp, rows, sharpness=1.5, eps=1e-5, want_alpha=True)
    want, want_alpha = _reference(h, hsp, rows, 1.5)
    assert out.dtype == hsp.dtype and out.shape == hsp.shape
    torch.testing.assert_close(alpha.double(), want_alpha, rtol=0, atol=2e-6)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    for b, k in enumerate(rows):
        if k == 0.0:
            assert torch.equal(out[b], hsp[b])  # rows of an unselected pass: exactly the input
    assert torch.equal(hsp, _features(batch, cx, height, width, 0, offset=3.0))  # input untouched


def _channels_last_view(t):
    """The layout SD's transformer blocks hand on: a [B, HW, C] buffer seen as [B, C, H, W]."""
    batch, channels, height, width = t.shape
    return t.permute(0, 2, 3, 1).reshape(batch, height * width, channels).contiguous() \
        .reshape(batch, height, width, channels).permute(0, 3, 1, 2)


@pytest.mark.parametrize("layout", ["channels_last", "hsp_channels_last_h_nchw", "pixel_stride_2"])
def test_fused_gate_on_strided_layouts(interpreted, layout):
    hsp = _features(2, 24, 9, 7, 6, offset=1.0)
    h = _features(2, 40, 9, 7, 7)
    want, want_alpha = _reference(h, hsp, [0.6, 0.25], 1.2)
    if layout == "channels_last":
        hsp_in, h_in = _channels_last_view(hsp), _channels_last_view(h)
    elif layout == "hsp_channels_last_h_nchw":
        hsp_in, h_in = hsp.contiguous(memory_format=torch.channels_last), h
    else:  # h as every other column of a twice-as-wide map (read only: any pixel-flat strides do)
        wide = torch.zeros(2, 40, 9, 14)
        wide[..., ::2] = h
        hsp_in, h_in = hsp, wide[..., ::2]
        refused = torch.zeros(2, 24, 9, 14)[..., ::2]  # the output could not keep these strides
        assert interpreted.fused_skip_gate(h, refused, [0.6, 0.25], 1.2, 1e-5) is None
    assert not (hsp_in.is_contiguous() and h_in.is_contiguous())
    assert interpreted.pixel_flat(hsp_in) and interpreted.pixel_flat(h_in)
    out, alpha = interpreted.fused_skip_gate(h_in, hsp_in, [0.6, 0.25], sharpness=1.2, eps=1e-5,
                                             want_alpha=True)
    assert out.stride() == hsp_in.stride()
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alpha.double(), want_alpha, rtol=0, atol=2e-6)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "mixed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_gate_writes_the_concatenation(interpreted, layout, dtype):
    """``concat``: the output is ``torch.cat([h, m * hsp], 1)`` bitwise, with the strides
    ``torch.cat`` gives, and ``h`` and ``hsp`` are left as they were."""
    hsp = _features(2, 24, 9, 7, 11, offset=1.0).to(dtype)
    h = _features(2, 40, 9, 7, 12).to(dtype)
    if layout == "channels_last":
        hsp, h = _channels_last_view(hsp), _channels_last_view(h)
    elif layout == "mixed":
        hsp = hsp.contiguous(memory_format=torch.channels_last)
    before = (h.clone(), hsp.clone())
    rows = [0.6, 0.0]
    gated, _ = interpreted.fused_skip_gate(h, hsp, rows, sharpness=1.2, eps=1e-5)
    joined, alpha = interpreted.fused_skip_gate(h, hsp, rows, sharpness=1.2, eps=1e-5, want_alpha=True, concat=True)
    want = torch.cat([h, gated], 1)
    assert joined.shape == want.shape and joined.stride() == torch.cat([h, hsp], 1).stride()
    assert torch.equal(joined, want)
    want_math, want_alpha = _reference(h.float(), hsp.float(), rows, 1.2)
    tolerance = 2e-3 if dtype == torch.float16 else 1e-5
    torch.testing.assert_close(joined[:, 40:].double(), want_math, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(alpha.double(), want_alpha, rtol=0, atol=tolerance)
    assert torch.equal(h, before[0]) and torch.equal(hsp, before[1])


def test_concatenation_of_mixed_dtypes_is_refused(interpreted):
    """``torch.cat`` would promote ``h``: the fused gate does not write such a concatenation."""
    hsp = _features(1, 8, 6, 6, 13).to(torch.float16)
    h = _features(1, 8, 6, 6, 14)
    assert interpreted.fused_skip_gate(h, hsp, [1.0], 1.0, 1e-5, concat=True) is None
    assert interpreted.fused_skip_gate(h, hsp, [1.0], 1.0, 1e-5) is not None


def test_unaddressable_layouts_are_left_to_the_eager_path_and_unaligned_data_is_gated(interpreted):
    hsp = _features(1, 8, 6, 6, 8)
    h = _features(1, 8, 6, 6, 9)
    transposed = _features(1, 8, 6, 6, 10).transpose(2, 3)  # pixels not in row-major order
    assert interpreted.fused_skip_gate(transposed, hsp, [1.0], 1.0, 1e-5) is None
    shifted = torch.empty(hsp.numel() + 1)[1:].view_as(hsp)  # 4 bytes past a 16-byte boundary
    shifted.copy_(hsp)
    out, _ = interpreted.fused_skip_gate(h, shifted, [1.0], 1.0, 1e-5)
    want, _ = _reference(h, hsp, [1.0], 1.0)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


def test_fused_gate_fp16(interpreted):
    hsp = _features(2, 24, 9, 12, 2).to(torch.float16)
    h = _features(2, 48, 9, 12, 3).to(torch.float16)
    rows = [0.5, 0.9]
    out, alpha = interpreted.fused_skip_gate(h, hsp, rows, sharpness=1.0, eps=1e-5, want_alpha=False)
    assert alpha is None and out.dtype == torch.float16
    want, _ = _reference(h.float(), hsp.float(), rows, 1.0)
    torch.testing.assert_close(out.double(), want, rtol=2e-3, atol=2e-3)  # one fp16 rounding


def test_tile_statistics_do_not_cancel(interpreted):
    """Energies on a large offset with a small spread: E[e^2]-E[e]^2 in fp32 would lose the variance."""
    hsp = _features(1, 16, 64, 64, 4, offset=0.0) * 0.01 + 100.0
    h = _features(1, 16, 64, 64, 5)
    out, alpha = interpreted.fused_skip_gate(h, hsp, [1.0], sharpness=1.0, eps=1e-12, want_alpha=True)
    _, want_alpha = _reference(h, hsp, [1.0], 1.0)
    # eps tiny: the standardised map depends on the variance alone
    want = reference_energy_alpha(h, hsp, 1.0, eps=1e-12)
    torch.testing.assert_close(alpha.double(), want, rtol=0, atol=5e-3)
    assert want_alpha.std() > 0.1  # the map is not flat: the check above means something


def test_patch_uses_fused_path_and_matches_eager(interpreted, monkeypatch):
    """The output_block_patch through the fused kernels gives the eager path's UNet output."""
    from unet_lab.unet_core.diffusion import unet
    from unet_lab.unet_core.diffusion.skip_concat import SKIP_CONCATENATION
    from unet_lab.unet_core.gates import skip_gate
    from unet_lab.unet_core.gates.apply import apply_skip_gate

    model = tiny_patcher("sd1")
    inputs = unet_inputs(model, batch=4)
    kwargs = dict(strength=0.8, floor=0.2, sharpness=1.3, apply_to="cond", record_maps=True)
    eager, eager_rec, _ = apply_skip_gate(model, tiny_config("sd1"), "sd1", **kwargs)
    want = run(eager, inputs, [1, 0])
    calls = []
    real = interpreted.FusedSkipGate.__call__

    def counting(self, h, hsp, *args, **kw):
        calls.append(hsp.shape)
        return real(self, h, hsp, *args, **kw)

    handed_over = []
    real_concatenate = unet.concatenate_skip

    def concatenate(h, hsp, options):
        offered = options.get(SKIP_CONCATENATION)
        joined = real_concatenate(h, hsp, options)
        handed_over.append(offered is not None and joined is offered[2])
        return joined

    monkeypatch.setattr(skip_gate, "fused_usable", lambda h, hsp: True)
    monkeypatch.setattr(interpreted.FusedSkipGate, "__call__", counting)
    monkeypatch.setattr(unet, "concatenate_skip", concatenate)
    fused, fused_rec, _ = apply_skip_gate(model, tiny_config("sd1"), "sd1", **kwargs)
    got = run(fused, inputs, [1, 0])
    assert len(calls) == len(tiny_config("sd1").block_out_channels) * 2  # every output block, once
    assert handed_over == [True] * len(calls)  # the kernel wrote every block's concatenation
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.equal(want, run(model, inputs, [1, 0]))  # the gate acted
    for block_id in eager_rec.blocks:
        torch.testing.assert_close(fused_rec.gate_map(block_id, 0), eager_rec.gate_map(block_id, 0),
                                   rtol=0, atol=1e-5)
