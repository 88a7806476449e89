"""The pixel U-Net's GroupNorm dispatch: where the fused kernels may run, and the kernels themselves
(``interpreted_norm_act.py``, in Triton's CPU interpreter, in its own pytest process: Triton decides on
interpretation when it is first imported, which in this process may already have happened)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pack_support import run_in_triton_interpreter
from unet_lab.unet_core.pixel_diffusion import norm_act


def test_norm_act_kernels_in_the_triton_interpreter():
    pytest.importorskip("triton")
    run_in_triton_interpreter("interpreted_norm_act.py")


def test_fused_path_is_refused_where_it_would_be_wrong():
    norm = nn.GroupNorm(4, 8)
    x = torch.randn(2, 8, 4, 4)
    assert not norm_act.fused_usable(x, norm)  # CPU: eager
    meta = torch.empty(2, 8, 4, 4, device="meta")
    assert not norm_act.fused_usable(meta, norm)
    with torch.no_grad():
        assert not norm_act.fused_usable(x.contiguous(memory_format=torch.channels_last), norm)


def test_eager_path_is_the_modules_own_ops():
    """On the CPU ``norm_act`` computes exactly what GroupNorm, addcmul and SiLU modules compute."""
    gen = torch.Generator().manual_seed(0)
    norm = nn.GroupNorm(4, 8)
    x, e, s, t = (torch.randn(2, 8, *size, generator=gen) for size in [(5, 5), (1, 1), (1, 1), (1, 1)])
    assert torch.equal(norm_act.norm_act(x, norm), nn.SiLU()(norm(x)))
    assert torch.equal(norm_act.norm_act(x, norm, add=e), nn.SiLU()(norm(x + e)))
    assert torch.equal(norm_act.norm_act(x, norm, scale_shift=(s, t), silu=False), torch.addcmul(t, norm(x), 1 + s))


@pytest.mark.parametrize("rows, group_size", [(8192, 4096), (256, 262144), (1, 10), (4, 64 * 1024 * 64 + 1)])
def test_chunking_covers_each_row_once(rows, group_size):
    chunk, chunks = norm_act.chunking(group_size, rows)
    assert chunk % 1024 == 0 and 1 <= chunks <= 64
    assert (chunks - 1) * chunk < group_size <= chunks * chunk


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fused_equals_eager_on_cuda(dtype):
    norm = nn.GroupNorm(32, 128, 1e-6).cuda().to(dtype)
    x = torch.randn(4, 128, 64, 64, device="cuda", dtype=dtype)
    e = torch.randn(4, 128, 1, 1, device="cuda", dtype=dtype)
    with torch.no_grad():
        fused = norm_act.norm_act(x, norm, add=e)
        with norm_act.eager_only():
            eager = norm_act.norm_act(x, norm, add=e)
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(fused, eager, rtol=tol, atol=tol)
