"""Triton source of the fused parameter-free skip gate: one kernel, run as two launches (``fused_gate.py``).

This module imports Triton at import time, so only ``fused_gate`` imports it, lazily, after
checking that Triton is installed. ``triton.jit`` decides when it wraps these functions whether
they run compiled or in Triton's CPU interpreter (``TRITON_INTERPRET=1`` set before the import).

Layout: any "pixel-flat" strides: element ``(b, c, p)`` at ``b * s_b + c * s_c + p * s_p`` with
``p = y * W + x`` the flat pixel index, which holds for contiguous NCHW (``s_p = 1``) and for the
channels-last views SD's transformer blocks return (``s_c = 1``); the caller checks it. Triton
specialises a stride of 1, so either layout gets contiguous loads.
"""

import triton
import triton.language as tl


@triton.jit
def channel_sum_of_squares(ptr, base, n_channels, stride_c, offs_p, stride_p, pmask,
                           copy_ptr, copy_base, copy_stride_c, copy_stride_p,
                           BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, COPY: tl.constexpr):
    """Per pixel of the tile, ``sum_c t[c, p]^2`` in fp32 for the map at ``ptr + base``; with
    ``COPY``, the values read are also stored unchanged at ``copy_ptr + copy_base`` (own strides)."""
    acc = tl.zeros([BLOCK_P], dtype=tl.float32)
    for c0 in range(0, n_channels, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask = (offs_c < n_channels)[:, None] & pmask[None, :]
        v = tl.load(ptr + base + offs_c[:, None] * stride_c + offs_p[None, :] * stride_p, mask=mask, other=0.0)
        if COPY:
            tl.store(copy_ptr + copy_base + offs_c[:, None] * copy_stride_c + offs_p[None, :] * copy_stride_p, v,
                     mask=mask)
        v = v.to(tl.float32)
        acc += tl.sum(v * v, axis=0)
    return acc


@triton.jit
def gate_kernel(x_ptr, g_ptr, out_ptr, g_out_ptr, alpha_ptr, scratch_ptr, coef_ptr,
                cx, cg, hw, n_tiles, partial_offset, sx_b, sx_c, sx_p, sg_b, sg_c, sg_p, so_b, so_c, so_p,
                sharpness, eps, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
                WRITE_ALPHA: tl.constexpr, COPY_G: tl.constexpr, PHASE: tl.constexpr):
    """One program per (sample b, tile t of BLOCK_P pixels); launched with PHASE 1, then PHASE 2.

    PHASE 1, statistics: per pixel ``e_x = ||x[b, :, p]||``, ``e_g = ||g[b, :, p]||`` (fp32) into
    ``energy`` [B, 2, HW]; per tile (mean, M2) of each map into ``partial`` [B, n_tiles, 4]; both
    in one fp32 scratch buffer (energy first, partial from ``partial_offset``). With ``COPY_G``
    it also copies ``g`` to ``g_out`` (strides ``so_*``) as it reads it; with ``out`` the channels
    after ``g_out``'s, the two phases together write ``cat([g, m * x], 1)``.
    PHASE 2, apply: combine the tile statistics (Chan et al.'s parallel variance, free of the
    cancellation of ``E[e^2] - E[e]^2``), standardise both maps, ``alpha = sigmoid(sharpness
    (x^ + g^))``, ``m = 1 - k_b + k_b alpha`` with ``k_b = coef[b]`` (0 gives exactly 1), and
    ``out = m * x`` over every channel of the tile (``out`` with strides ``so_*``); alpha
    (contiguous [B, 1, H, W]) too if ``WRITE_ALPHA``.
    """
    energy_ptr = scratch_ptr
    partial_ptr = scratch_ptr + partial_offset
    b = tl.program_id(0)
    t = tl.program_id(1)
    offs_p = t * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < hw
    if PHASE == 1:
        e_x = tl.sqrt(channel_sum_of_squares(x_ptr, b * sx_b, cx, sx_c, offs_p, sx_p, pmask,
                                             x_ptr, 0, 0, 0, BLOCK_C, BLOCK_P, False))
        e_g = tl.sqrt(channel_sum_of_squares(g_ptr, b * sg_b, cg, sg_c, offs_p, sg_p, pmask,
                                             g_out_ptr, b * so_b, so_c, so_p, BLOCK_C, BLOCK_P, COPY_G))
        tl.store(energy_ptr + (2 * b) * hw + offs_p, e_x, mask=pmask)
        tl.store(energy_ptr + (2 * b + 1) * hw + offs_p, e_g, mask=pmask)
        # tile statistics, two-pass inside the tile (the values are in registers): mean and M2
        count = tl.sum(pmask.to(tl.float32), axis=0)
        mean_tx = tl.sum(tl.where(pmask, e_x, 0.0), axis=0) / count
        mean_tg = tl.sum(tl.where(pmask, e_g, 0.0), axis=0) / count
        d_x = tl.where(pmask, e_x - mean_tx, 0.0)
        d_g = tl.where(pmask, e_g - mean_tg, 0.0)
        base = partial_ptr + (b * n_tiles + t) * 4
        tl.store(base + 0, mean_tx)
        tl.store(base + 1, tl.sum(d_x * d_x, axis=0))
        tl.store(base + 2, mean_tg)
        tl.store(base + 3, tl.sum(d_g * d_g, axis=0))
    if PHASE == 2:
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
        e_x = tl.load(energy_ptr + (2 * b) * hw + offs_p, mask=pmask, other=0.0)
        e_g = tl.load(energy_ptr + (2 * b + 1) * hw + offs_p, mask=pmask, other=0.0)
        alpha = tl.sigmoid(sharpness * ((e_x - mean_x) * inv_x + (e_g - mean_g) * inv_g))
        k = tl.load(coef_ptr + b)
        m = (1.0 - k) + k * alpha  # k = 0 gives exactly 1
        if WRITE_ALPHA:
            tl.store(alpha_ptr + b * hw + offs_p, alpha.to(alpha_ptr.dtype.element_ty), mask=pmask)
        for c0 in range(0, cx, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask = (offs_c < cx)[:, None] & pmask[None, :]
            v = tl.load(x_ptr + b * sx_b + offs_c[:, None] * sx_c + offs_p[None, :] * sx_p, mask=mask, other=0.0)
            tl.store(out_ptr + b * so_b + offs_c[:, None] * so_c + offs_p[None, :] * so_p,
                     (v.to(tl.float32) * m[None, :]).to(out_ptr.dtype.element_ty), mask=mask)
