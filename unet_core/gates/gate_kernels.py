"""Triton source of the fused parameter-free skip gate (two kernels; see ``fused_gate.py``).

This module imports Triton at import time, so only ``fused_gate.load_kernels`` imports it,
after checking Triton is there. The functions are plain Python here; ``load_kernels`` wraps
them with ``triton.jit`` (so tests can build them for Triton's CPU interpreter).

Layout: contiguous NCHW (the caller checks), element ``(b, c, p)`` at ``(b * C + c) * HW + p``
with ``p = y * W + x`` the flat pixel index; contiguous rows of pixels make coalesced loads.
"""

import triton.language as tl


def gate_energy_kernel(x_ptr, g_ptr, scratch_ptr, cx, cg, hw, n_tiles, partial_offset,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per pixel: e_x = ||x[b, :, p]||, e_g = ||g[b, :, p]|| (fp32) into ``energy`` [B, 2, HW];
    per tile of BLOCK_P pixels: (mean, M2) of each map into ``partial`` [B, n_tiles, 4]. Both
    live in one fp32 scratch buffer: energy first, partial from ``partial_offset``."""
    energy_ptr = scratch_ptr
    partial_ptr = scratch_ptr + partial_offset
    b = tl.program_id(0)
    t = tl.program_id(1)
    offs_p = t * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < hw
    acc_x = tl.zeros([BLOCK_P], dtype=tl.float32)
    for c0 in range(0, cx, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        ptrs = x_ptr + (b * cx + offs_c[:, None]) * hw + offs_p[None, :]
        v = tl.load(ptrs, mask=(offs_c < cx)[:, None] & pmask[None, :], other=0.0).to(tl.float32)
        acc_x += tl.sum(v * v, axis=0)
    acc_g = tl.zeros([BLOCK_P], dtype=tl.float32)
    for c0 in range(0, cg, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        ptrs = g_ptr + (b * cg + offs_c[:, None]) * hw + offs_p[None, :]
        v = tl.load(ptrs, mask=(offs_c < cg)[:, None] & pmask[None, :], other=0.0).to(tl.float32)
        acc_g += tl.sum(v * v, axis=0)
    e_x = tl.sqrt(acc_x)
    e_g = tl.sqrt(acc_g)
    tl.store(energy_ptr + (2 * b) * hw + offs_p, e_x, mask=pmask)
    tl.store(energy_ptr + (2 * b + 1) * hw + offs_p, e_g, mask=pmask)
    # tile statistics, two-pass inside the tile (the values are in registers): mean and M2
    count = tl.sum(pmask.to(tl.float32), axis=0)
    mean_x = tl.sum(tl.where(pmask, e_x, 0.0), axis=0) / count
    mean_g = tl.sum(tl.where(pmask, e_g, 0.0), axis=0) / count
    d_x = tl.where(pmask, e_x - mean_x, 0.0)
    d_g = tl.where(pmask, e_g - mean_g, 0.0)
    base = partial_ptr + (b * n_tiles + t) * 4
    tl.store(base + 0, mean_x)
    tl.store(base + 1, tl.sum(d_x * d_x, axis=0))
    tl.store(base + 2, mean_g)
    tl.store(base + 3, tl.sum(d_g * d_g, axis=0))


def gate_apply_kernel(x_ptr, out_ptr, scratch_ptr, coef_ptr, alpha_ptr, cx, hw, n_tiles, partial_offset,
                      sharpness, eps,
                      BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
                      WRITE_ALPHA: tl.constexpr):
    """Combine the tile statistics (Chan et al.'s parallel variance), standardise both maps,
    ``alpha = sigmoid(sharpness (x^ + g^))``, ``m = 1 - k_b + k_b alpha`` and write ``out = m * x``
    for BLOCK_C channels x BLOCK_P pixels; the first channel block also writes alpha if asked."""
    energy_ptr = scratch_ptr
    partial_ptr = scratch_ptr + partial_offset
    b = tl.program_id(0)
    t = tl.program_id(1)
    cb = tl.program_id(2)
    offs_t = tl.arange(0, BLOCK_T)
    tmask = offs_t < n_tiles
    pbase = partial_ptr + (b * n_tiles + offs_t) * 4
    tile_mean_x = tl.load(pbase + 0, mask=tmask, other=0.0)
    tile_m2_x = tl.load(pbase + 1, mask=tmask, other=0.0)
    tile_mean_g = tl.load(pbase + 2, mask=tmask, other=0.0)
    tile_m2_g = tl.load(pbase + 3, mask=tmask, other=0.0)
    counts = tl.where(tmask, tl.minimum(hw - offs_t * BLOCK_P, BLOCK_P), 0).to(tl.float32)
    total = hw * 1.0
    mean_x = tl.sum(counts * tile_mean_x, axis=0) / total
    mean_g = tl.sum(counts * tile_mean_g, axis=0) / total
    dm_x = tile_mean_x - mean_x
    dm_g = tile_mean_g - mean_g
    var_x = (tl.sum(tile_m2_x, axis=0) + tl.sum(counts * dm_x * dm_x, axis=0)) / total
    var_g = (tl.sum(tile_m2_g, axis=0) + tl.sum(counts * dm_g * dm_g, axis=0)) / total
    inv_x = 1.0 / tl.sqrt(var_x + eps)
    inv_g = 1.0 / tl.sqrt(var_g + eps)

    offs_p = t * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < hw
    e_x = tl.load(energy_ptr + (2 * b) * hw + offs_p, mask=pmask, other=0.0)
    e_g = tl.load(energy_ptr + (2 * b + 1) * hw + offs_p, mask=pmask, other=0.0)
    alpha = tl.sigmoid(sharpness * ((e_x - mean_x) * inv_x + (e_g - mean_g) * inv_g))
    k = tl.load(coef_ptr + b)
    m = (1.0 - k) + k * alpha  # k = 0 gives exactly 1
    if WRITE_ALPHA:
        if cb == 0:
            tl.store(alpha_ptr + b * hw + offs_p, alpha.to(alpha_ptr.dtype.element_ty), mask=pmask)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (offs_c < cx)[:, None] & pmask[None, :]
    offs = (b * cx + offs_c[:, None]) * hw + offs_p[None, :]
    v = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, (v.to(tl.float32) * m[None, :]).to(out_ptr.dtype.element_ty), mask=mask)
