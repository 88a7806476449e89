"""The fused GroupNorm of the pixel U-Net (``norm_act``) against the math, in Triton's CPU interpreter.

The kernels are the source that runs on CUDA; ``TRITON_INTERPRET=1`` executes them with numpy
on CPU tensors, so their indexing, masking, chunking and the merge of chunk statistics are
checked here against GroupNorm written out in float64. Triton reads that variable when it is
first imported, so this file runs in its own pytest process, started by
``pixel_diffusion/test_pixel_norm_act.py`` (its name keeps the main run from collecting it). On
the GPU machine, ``benchmarks/bench_pixel_diffusion.py`` compares fused and eager full-size models.
"""

from __future__ import annotations

import dataclasses
import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import pytest  # noqa: E402
import torch
from torch import nn

pytest.importorskip("triton")


@pytest.fixture
def interpreted(monkeypatch):
    """``norm_act`` with its kernels built for the interpreter, where CPU tensors take the fused path
    (they count as the launch device)."""
    from triton.runtime.interpreter import InterpretedFunction

    from unet_lab.unet_core.pixel_diffusion import norm_act

    assert isinstance(norm_act._kernels().stats_kernel, InterpretedFunction)
    monkeypatch.setattr(norm_act, "on_launch_device", lambda x: x.device.type == "cpu")
    torch.set_num_threads(1)
    return norm_act


def reference(x, groups, weight, bias, eps, add=None, scale_shift=None, silu=True):
    """GroupNorm and what follows it, in float64 from the definition (biased variance)."""
    x = x.double() + (add.double() if add is not None else 0.0)
    b, c, h, w = x.shape
    rows = x.reshape(b, groups, -1)
    mean = rows.mean(-1, keepdim=True)
    var = ((rows - mean) ** 2).mean(-1, keepdim=True)
    y = ((rows - mean) / torch.sqrt(var + eps)).reshape(b, c, h, w)
    y = y * weight.double().view(1, c, 1, 1) + bias.double().view(1, c, 1, 1)
    if scale_shift is not None:
        scale, shift = scale_shift
        y = y * (1 + scale.double()) + shift.double()
    return y * torch.sigmoid(y) if silu else y


def _norm(channels, groups, eps, seed):
    gen = torch.Generator().manual_seed(seed)
    norm = nn.GroupNorm(groups, channels, eps)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(channels, generator=gen))
        norm.bias.copy_(0.5 * torch.randn(channels, generator=gen))
    return norm


# one chunk per row; several chunks with a short last one; a row shorter than one block
@pytest.mark.parametrize("shape", [(2, 64, 8, 8, 32), (3, 32, 33, 17, 8), (2, 16, 96, 90, 4), (4, 6, 3, 5, 3)])
@pytest.mark.parametrize("extra", ["none", "add", "scale_shift", "no_silu"])
def test_fused_norm_matches_the_math_fp32(interpreted, shape, extra):
    b, c, h, w, groups = shape
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(b, c, h, w, generator=gen) * 3 + 5  # an offset: the variance must not cancel
    terms = [torch.randn(b, c, 1, 1, generator=gen) for _ in range(3)]
    norm = _norm(c, groups, 1e-6, 2)
    kwargs = {"add": {"add": terms[0]}, "scale_shift": {"scale_shift": (terms[1], terms[2])},
              "no_silu": {"silu": False}, "none": {}}[extra]
    with torch.no_grad():
        out = interpreted.norm_act(x, norm, **kwargs)
    expected = reference(x, groups, norm.weight, norm.bias, norm.eps, **kwargs)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-5)


def test_rows_are_cut_into_several_chunks(interpreted):
    """The shapes above reach the multi-chunk merge (and the tiny one a single partial block)."""
    assert interpreted.chunking(4 * 96 * 90, 2 * 4)[1] > 1
    assert interpreted.chunking(2 * 3 * 5, 4 * 3) == (1024, 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_norm_half_precision_within_rounding(interpreted, dtype):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 64, 16, 16, generator=gen) * 2 + 1).to(dtype)
    add = torch.randn(2, 64, 1, 1, generator=gen).to(dtype)
    norm = _norm(64, 32, 1e-5, 4).to(dtype)
    with torch.no_grad():
        out = interpreted.norm_act(x, norm, add=add)
        eager = interpreted.eager_norm_act(x, norm, add=add)
    expected = reference((x + add).float(), 32, norm.weight, norm.bias, norm.eps)  # eager rounds x + add too
    assert out.dtype == dtype
    ulp = {torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
    bound = 2 * ulp * (1 + expected.abs())
    assert bool(((out.double() - expected).abs() <= bound).all())
    assert bool(((eager.double() - expected).abs() <= 2 * bound).all())  # the same scale of error as eager


def test_pixel_unet_with_fused_norms_equals_eager(interpreted):
    """A whole model (scale-shift ResBlocks, resampling ResBlocks, attention, the output norm):
    fused and eager forwards agree to fp32 rounding."""
    from unet_lab.unet_core.pixel_diffusion.model import PixelUNet
    from unet_lab.unet_core.pixel_unet_config import GUIDED_64_COND

    config = dataclasses.replace(GUIDED_64_COND, block_channels=(16, 32), num_res_blocks=1, attention_levels=(1,),
                                  time_channels=16, time_embed_dim=32, image_size=8, head_channels=8, num_classes=10,
                                  norm_groups=8)
    torch.manual_seed(0)
    model = PixelUNet(config).eval()
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([10, 500]), torch.tensor([1, 7])
    with torch.no_grad():
        fused = model(x, t, y)
        with interpreted.eager_only():
            eager = model(x, t, y)
    assert not torch.equal(fused, eager)  # the fused path ran (different summation order)
    torch.testing.assert_close(fused, eager, rtol=0, atol=1e-5)
