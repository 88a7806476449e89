"""Objects in a mask: connected components (run-length union-find) and their one-pixel outlines.

Used by the border weight map (objects and their distances) and by the overlay (an outline per
object, so touching objects stay visible). Pure numpy.
"""

from __future__ import annotations

import numpy as np


def connected_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Labels 1..n of the connected foreground regions of a 2-D boolean mask (0 = background).

    Run-length labelling with union-find: one pass over the rows' runs, so the cost grows with
    the number of runs, not of pixels. Labels are numbered in raster order of each object's
    first run.
    """
    if connectivity not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    rows, cols = np.nonzero(np.diff(padded, axis=1))
    starts, ends, run_rows = cols[0::2], cols[1::2], rows[0::2]  # half-open [start, end) per run
    count = len(starts)
    labels = np.zeros((height, width), dtype=np.int32)
    if count == 0:
        return labels, 0
    parent = list(range(count))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    slack = 1 if connectivity == 8 else 0
    row_first = np.searchsorted(run_rows, np.arange(height + 1))
    s_list, e_list = starts.tolist(), ends.tolist()
    for y in range(1, height):
        i, i_end = int(row_first[y - 1]), int(row_first[y])
        j, j_end = i_end, int(row_first[y + 1])
        while i < i_end and j < j_end:
            if s_list[i] < e_list[j] + slack and s_list[j] < e_list[i] + slack:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if e_list[i] < e_list[j]:
                i += 1
            else:
                j += 1
    roots = np.array([find(i) for i in range(count)])
    _, run_labels = np.unique(roots, return_inverse=True)  # roots ascend with raster order
    lengths = ends - starts
    flat = np.repeat(run_rows * width + starts, lengths) + _ramp(lengths)
    labels.reshape(-1)[flat] = np.repeat(run_labels + 1, lengths)
    return labels, int(run_labels.max()) + 1


def _ramp(lengths: np.ndarray) -> np.ndarray:
    """0, 1, .., n0-1, 0, 1, .., n1-1, ... for run lengths n0, n1, ... (vectorised)."""
    total = int(lengths.sum())
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total) - offsets


def object_outlines(labels: np.ndarray) -> np.ndarray:
    """Boolean [H, W]: pixels of an object (label > 0) with a 4-neighbour of another label (or background).

    The image border itself is no outline: an object cut by the edge is outlined along its
    inner sides only.
    """
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:] != labels[:-1]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge & (labels > 0)
