"""The U-Net paper's border weight map (Ronneberger et al., 2015, eq. 2), fast enough to build once per mask.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

``w_c`` balances the classes (1 / (classes present * class frequency), so its mean is 1); ``d1``
and ``d2`` are the Euclidean distances from a pixel to the nearest and the second-nearest object
(an object is a connected component of foreground, or one instance of a label image). The border
term is added on background pixels only (the gaps between touching objects that the paper wants
learned) and only where an image has at least two objects.

Why it is fast: the border term falls below ``tolerance`` (default 1e-7) wherever
``d1 + d2 > reach = sigma * sqrt(2 ln(w0 / tolerance))`` (about 28 px for w0 = 10, sigma = 5), and
since ``d1 <= d2`` it only needs ``d2 <= reach``. So each object's exact Euclidean distance
transform is computed only inside its bounding box grown by ``reach`` (a separable exact transform:
distances along columns, then an exact minimum over each row, vectorised in numpy), and the two
smallest distances per pixel are kept with vectorised minimum updates. The result equals the
direct formula to within ``tolerance`` (pixels farther than ``reach`` from a second object get
no border term, where the direct formula gives less than ``tolerance``).

Inputs are numpy arrays; ``border_weight_maps`` takes and returns torch batches. Objects come from
:func:`..components.connected_components`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...errors import InputError
from ..components import connected_components

DEFAULT_TOLERANCE = 1e-7


def distance_transform(mask: np.ndarray, chunk_bytes: int = 16 << 20) -> np.ndarray:
    """Exact Euclidean distance from every pixel to the nearest True pixel of ``mask`` (inf if none).

    Separable: the distance along each column to the nearest True pixel (two vectorised scans),
    then for each row the exact minimum over x' of (x - x')**2 + column(x')**2, where x' runs
    over the columns that hold a True pixel (the others add nothing). The second pass costs
    height * width * (columns with a True pixel), so call it on crops around one object (as
    ``border_weight_map`` does).
    """
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    occupied = np.flatnonzero(mask.any(axis=0))
    if occupied.size == 0:
        return np.full((height, width), np.inf)
    sub = mask[:, occupied]
    index = np.arange(height, dtype=np.float64)[:, None]
    above = np.maximum.accumulate(np.where(sub, index, -np.inf), axis=0)
    below = np.minimum.accumulate(np.where(sub, index, np.inf)[::-1], axis=0)[::-1]
    column = np.minimum(index - above, below - index)  # finite: each occupied column has a True pixel
    # float32 holds these squared integer distances exactly (< 2**24 for crops up to 2896 px a side)
    dtype = np.float32 if (height + width) ** 2 < 2 ** 24 else np.float64
    g2 = (column * column).astype(dtype)
    dx2 = (np.arange(width, dtype=dtype)[:, None] - occupied.astype(dtype)[None, :]) ** 2  # [x, x']
    rows = max(1, chunk_bytes // (dtype().itemsize * width * occupied.size))
    out = np.empty((height, width), dtype=dtype)
    for y0 in range(0, height, rows):
        out[y0:y0 + rows] = np.min(dx2[None, :, :] + g2[y0:y0 + rows, None, :], axis=2)
    return np.sqrt(out, dtype=np.float64)


def border_reach(w0: float, sigma: float, tolerance: float = DEFAULT_TOLERANCE) -> float:
    """The distance d1 + d2 beyond which the border term ``w0 exp(-(d1+d2)^2 / 2 sigma^2)`` is below ``tolerance``."""
    if w0 <= tolerance:
        return 0.0
    return float(sigma) * math.sqrt(2.0 * math.log(w0 / tolerance))


def two_nearest_distances(objects: np.ndarray, count: int, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Distances d1 <= d2 from each pixel to its nearest and second-nearest object, exact up to ``reach``.

    ``objects`` holds labels 1..count (0 background). Where the true distance exceeds ``reach``
    the value may be inf instead.
    """
    height, width = objects.shape
    d1 = np.full((height, width), np.inf)
    d2 = np.full((height, width), np.inf)
    margin = int(math.ceil(reach)) + 1
    ys, xs = np.nonzero(objects)
    ids = objects[ys, xs]
    order = np.argsort(ids, kind="stable")
    ys, xs, ids = ys[order], xs[order], ids[order]
    bounds = np.searchsorted(ids, np.arange(1, count + 2))
    for k in range(count):
        lo, hi = bounds[k], bounds[k + 1]
        if lo == hi:
            continue
        oy, ox = ys[lo:hi], xs[lo:hi]
        y0, y1 = max(0, int(oy.min()) - margin), min(height, int(oy.max()) + margin + 1)
        x0, x1 = max(0, int(ox.min()) - margin), min(width, int(ox.max()) + margin + 1)
        crop = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        crop[oy - y0, ox - x0] = True
        d = distance_transform(crop)
        near, second = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]
        np.minimum(second, np.maximum(near, d), out=second)
        np.minimum(near, d, out=near)
    return d1, d2


def class_balance_weights(labels: np.ndarray) -> np.ndarray:
    """w_c: 1 / (classes present * frequency of the pixel's class), float64 (mean 1)."""
    if labels.size and labels.min() >= 0:  # the common case: counting beats sorting
        counts = np.bincount(labels.reshape(-1)).astype(np.float64)
        present = int(np.count_nonzero(counts))
        per_class = np.divide(labels.size, present * counts, out=np.zeros_like(counts), where=counts > 0)
        return per_class[labels]
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    per_class = labels.size / (len(classes) * counts.astype(np.float64))
    return per_class[inverse.reshape(labels.shape)]


def border_weight_map(mask: np.ndarray, w0: float = 10.0, sigma: float = 5.0, class_balance: bool = True,
                      connectivity: int = 8, instances: np.ndarray | None = None,
                      tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
    """The weight map of one 2-D mask (0 background, >0 foreground classes) -> float32 [H, W].

    ``instances`` (optional, same shape, 0 background, one id per object) gives the objects
    directly, so touching objects of a label image stay apart; without it, objects are the
    connected components of ``mask > 0`` with ``connectivity`` (4 or 8).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"border weights: expected a 2-D mask, got shape {mask.shape}")
    labels = np.rint(mask).astype(np.int64) if mask.dtype.kind == "f" else mask.astype(np.int64)
    weights = class_balance_weights(labels) if class_balance else np.ones(labels.shape)
    if instances is not None:
        instances = np.asarray(instances)
        if instances.shape != labels.shape:
            raise InputError(f"border weights: instances {instances.shape} do not match the mask {labels.shape}")
        _, objects = np.unique(instances, return_inverse=True)
        objects = objects.reshape(labels.shape).astype(np.int32)
        if (instances == 0).any():
            count = int(objects.max())
        else:
            objects, count = objects + 1, int(objects.max()) + 1
    else:
        objects, count = connected_components(labels > 0, connectivity)
    if count >= 2 and w0 != 0:
        reach = border_reach(abs(w0), sigma, tolerance)
        d1, d2 = two_nearest_distances(objects, count, reach)
        background = labels == 0
        total = d1[background] + d2[background]
        weights[background] += w0 * np.exp(-(total * total) / (2.0 * sigma * sigma))
    return weights.astype(np.float32)


def border_weight_maps(masks: torch.Tensor, w0: float = 10.0, sigma: float = 5.0,
                       class_balance: bool = True) -> torch.Tensor:
    """``border_weight_map`` for each mask of a batch [B, H, W] -> float32 [B, H, W] (on the CPU)."""
    return torch.from_numpy(np.stack([border_weight_map(m.detach().cpu().numpy(), w0, sigma, class_balance)
                                      for m in masks]))
