"""Triton kernels of the fused GroupNorm (``norm_act``): partial statistics, then normalise.

Input ``x`` is contiguous NCHW, so the ``C / G`` channels of group ``g`` of sample ``b`` are one
contiguous run of ``group_size = (C / G) * H * W`` elements starting at ``row * group_size``,
``row = b * G + g``. Each row is cut into ``chunks`` runs of ``chunk`` elements; one program
handles one (row, chunk) in both launches:

1. ``stats_kernel``: count, mean and sum of squared deviations (fp32) of the chunk, with the
   optional per-(b, c) ``add`` term added first (rounded to the input's dtype, as ``h + e`` is in
   eager); blocks are merged with Chan's parallel formula, which stays accurate where
   ``E[x^2] - E[x]^2`` would cancel.
2. ``apply_kernel``: the row's partials merged the same way into its mean and biased variance,
   then ``y = (x' - mean) / sqrt(var + eps) * weight[c] + bias[c]``, optionally
   ``y * (1 + scale[b, c]) + shift[b, c]``, optionally ``silu(y)``, stored in the input's dtype.

Every sum runs in a fixed order, so the result does not depend on timing (no atomics).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def stats_kernel(x_ptr, add_ptr, partial_ptr, channels, group_channels, groups, hw, group_size, chunk,
                 chunks, HAS_ADD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    part = tl.program_id(1)
    start = part * chunk
    stop = tl.minimum(start + chunk, group_size)
    base = row.to(tl.int64) * group_size
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for offset in range(0, chunk, BLOCK):
        index = start + offset + tl.arange(0, BLOCK)
        inside = index < stop
        x = tl.load(x_ptr + base + index, mask=inside, other=0.0)
        if HAS_ADD:
            channel = (row % groups) * group_channels + index // hw
            e = tl.load(add_ptr + (row // groups) * channels + channel, mask=inside, other=0.0)
            x = (x.to(tl.float32) + e.to(tl.float32)).to(x.dtype)
        x = x.to(tl.float32)
        block_count = tl.sum(inside.to(tl.float32), axis=0)
        block_mean = tl.sum(x, axis=0) / tl.maximum(block_count, 1.0)
        deviation = tl.where(inside, x - block_mean, 0.0)
        block_m2 = tl.sum(deviation * deviation, axis=0)
        total = count + block_count
        delta = block_mean - mean
        mean = mean + delta * (block_count / tl.maximum(total, 1.0))
        m2 = m2 + block_m2 + delta * delta * (count * block_count / tl.maximum(total, 1.0))
        count = total
    slot = partial_ptr + (row * chunks + part) * 3
    tl.store(slot, count)
    tl.store(slot + 1, mean)
    tl.store(slot + 2, m2)


@triton.jit
def apply_kernel(x_ptr, add_ptr, weight_ptr, bias_ptr, scale_ptr, shift_ptr, partial_ptr, out_ptr, channels,
                 group_channels, groups, hw, group_size, chunk, chunks, eps, HAS_ADD: tl.constexpr,
                 SCALE_SHIFT: tl.constexpr, SILU: tl.constexpr, BLOCK: tl.constexpr, MAX_CHUNKS: tl.constexpr):
    row = tl.program_id(0)
    part = tl.program_id(1)
    parts = tl.arange(0, MAX_CHUNKS)
    present = parts < chunks
    slots = partial_ptr + (row * chunks + parts) * 3
    counts = tl.load(slots, mask=present, other=0.0)
    means = tl.load(slots + 1, mask=present, other=0.0)
    m2s = tl.load(slots + 2, mask=present, other=0.0)
    total = tl.sum(counts, axis=0)
    mean = tl.sum(counts * means, axis=0) / total
    spread = tl.where(present, means - mean, 0.0)
    variance = (tl.sum(m2s, axis=0) + tl.sum(counts * spread * spread, axis=0)) / total
    rstd = 1.0 / tl.sqrt(variance + eps)

    sample = row // groups
    start = part * chunk
    stop = tl.minimum(start + chunk, group_size)
    base = row.to(tl.int64) * group_size
    for offset in range(0, chunk, BLOCK):
        index = start + offset + tl.arange(0, BLOCK)
        inside = index < stop
        channel = (row % groups) * group_channels + index // hw
        x = tl.load(x_ptr + base + index, mask=inside, other=0.0)
        if HAS_ADD:
            e = tl.load(add_ptr + sample * channels + channel, mask=inside, other=0.0)
            x = (x.to(tl.float32) + e.to(tl.float32)).to(x.dtype)
        w = tl.load(weight_ptr + channel, mask=inside, other=1.0).to(tl.float32)
        b = tl.load(bias_ptr + channel, mask=inside, other=0.0).to(tl.float32)
        y = (x.to(tl.float32) - mean) * rstd * w + b
        if SCALE_SHIFT:
            scale = tl.load(scale_ptr + sample * channels + channel, mask=inside, other=0.0).to(tl.float32)
            shift = tl.load(shift_ptr + sample * channels + channel, mask=inside, other=0.0).to(tl.float32)
            y = y * (1.0 + scale) + shift
        if SILU:
            y = y / (1.0 + tl.exp(-y))
        tl.store(out_ptr + base + index, y.to(out_ptr.dtype.element_ty), mask=inside)
