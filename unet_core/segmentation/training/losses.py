"""Training losses: (binary) cross-entropy, soft Dice, and the U-Net paper's border weight map.

Loss names: ``"ce+dice"`` (default), ``"ce"``, ``"dice"``. "ce" is binary cross-entropy on
the logit when the model has one output channel (sigmoid) and softmax cross-entropy when it
has several; "dice" is the soft Dice loss 1 - 2Σpt / (Σp + Σt) over the batch (per class,
averaged, for several channels).

The border weight map (Ronneberger et al., 2015, eq. 2) is

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

with w_c a class-balancing weight (1 / (classes present * class frequency), so its mean is 1),
d1 and d2 the Euclidean distances to the nearest and second-nearest object (connected component
of foreground) and w0 = 10, sigma = 5 px. The border term is added on background pixels only
(the gaps between touching objects that the paper wants learned) and only where an image has at
least two objects. Connected components and distance transforms are written here in numpy:
run-length labelling with union-find, and an exact separable Euclidean distance transform
(column distances, then an exact minimum over each row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError

LOSSES = ("ce+dice", "ce", "dice")


# -- connected components ------------------------------------------------------------------
def connected_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Labels 1..n of the connected foreground regions of a 2-D boolean mask (0 = background)."""
    if connectivity not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    runs: list[tuple[int, int, int]] = []  # (row, start, end) half-open
    row_runs: list[list[int]] = []
    for y in range(height):
        padded = np.concatenate([[False], mask[y], [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(padded))
        ids = []
        for start, end in zip(edges[0::2], edges[1::2], strict=True):
            ids.append(len(runs))
            runs.append((y, int(start), int(end)))
        row_runs.append(ids)
    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    slack = 1 if connectivity == 8 else 0
    for y in range(1, height):
        above, below = row_runs[y - 1], row_runs[y]
        i = j = 0
        while i < len(above) and j < len(below):
            _, s1, e1 = runs[above[i]]
            _, s2, e2 = runs[below[j]]
            if s1 < e2 + slack and s2 < e1 + slack:
                a, b = find(above[i]), find(below[j])
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if e1 < e2:
                i += 1
            else:
                j += 1
    labels = np.zeros((height, width), dtype=np.int32)
    roots: dict[int, int] = {}
    for index, (y, start, end) in enumerate(runs):
        root = find(index)
        labels[y, start:end] = roots.setdefault(root, len(roots) + 1)
    return labels, len(roots)


# -- distance transform --------------------------------------------------------------------
def distance_to(mask: np.ndarray, chunk_bytes: int = 32 << 20) -> np.ndarray:
    """Exact Euclidean distance from every pixel to the nearest True pixel of ``mask`` (inf if none)."""
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    if not mask.any():
        return np.full((height, width), np.inf)
    big = float(height + width) ** 2
    # pass 1: distance along each column to the nearest True pixel (forward and backward scans)
    column = np.full((height, width), np.inf)
    last = np.full(width, -np.inf)
    for y in range(height):
        last = np.where(mask[y], y, last)
        column[y] = y - last
    last = np.full(width, np.inf)
    for y in range(height - 1, -1, -1):
        last = np.where(mask[y], y, last)
        column[y] = np.minimum(column[y], last - y)
    g2 = np.where(np.isfinite(column), column ** 2, big)
    # pass 2: exact min over x' of (x - x')^2 + g(y, x')^2, a block of rows at a time
    xs = np.arange(width, dtype=np.float64)
    dx2 = (xs[:, None] - xs[None, :]) ** 2  # [x, x']
    rows = max(1, chunk_bytes // (8 * width * width))
    out = np.empty((height, width))
    for y0 in range(0, height, rows):
        block = g2[y0:y0 + rows]
        out[y0:y0 + rows] = np.min(dx2[None, :, :] + block[:, None, :], axis=2)
    return np.sqrt(out)


def border_weight_map(mask: np.ndarray, w0: float = 10.0, sigma: float = 5.0, class_balance: bool = True,
                      connectivity: int = 8) -> np.ndarray:
    """The U-Net paper's weight map for one 2-D mask (labels: 0 background, >0 foreground classes)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"border weights: expected a 2-D mask, got shape {mask.shape}")
    labels = np.rint(mask).astype(np.int64) if mask.dtype.kind == "f" else mask.astype(np.int64)
    weights = np.ones(labels.shape, dtype=np.float64)
    if class_balance:
        classes, counts = np.unique(labels, return_counts=True)
        freq = counts / labels.size
        for c, f in zip(classes, freq, strict=True):
            weights[labels == c] = 1.0 / (len(classes) * f)
    objects, count = connected_components(labels > 0, connectivity)
    if count >= 2 and w0 != 0:
        d1 = np.full(labels.shape, np.inf)
        d2 = np.full(labels.shape, np.inf)
        for k in range(1, count + 1):
            d = distance_to(objects == k)
            d2 = np.minimum(d2, np.maximum(d1, d))
            d1 = np.minimum(d1, d)
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma ** 2))
        weights += np.where(labels == 0, border, 0.0)
    return weights.astype(np.float32)


def border_weights(masks: torch.Tensor, w0: float = 10.0, sigma: float = 5.0,
                   class_balance: bool = True) -> torch.Tensor:
    """``border_weight_map`` for each mask of a batch [B, H, W] -> float32 [B, H, W]."""
    return torch.from_numpy(np.stack([border_weight_map(m.cpu().numpy(), w0, sigma, class_balance)
                                      for m in masks]))


# -- losses --------------------------------------------------------------------------------
def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - (2Σpt + eps) / (Σp + Σt + eps) per channel over batch and pixels, averaged over channels."""
    dims = (0, 2, 3)
    inter = (probs * target).sum(dims)
    denom = probs.sum(dims) + target.sum(dims)
    return (1.0 - (2 * inter + eps) / (denom + eps)).mean()


@dataclass
class LossSums:
    """The sums a batch's loss is made of: additive over samples, so ranks can add theirs up.

    ``ce_sum``: the (weighted) cross-entropy summed over pixels; ``pixels``: how many;
    ``intersection`` / ``total`` [K]: the soft Dice sums per class channel (Σpt and Σp + Σt).
    """

    ce_sum: torch.Tensor
    pixels: torch.Tensor
    intersection: torch.Tensor
    total: torch.Tensor

    def vector(self) -> torch.Tensor:
        """The sums in one 1-D tensor ``[ce_sum, pixels, intersection..., total...]``."""
        return torch.cat([self.ce_sum.reshape(1), self.pixels.reshape(1).to(self.ce_sum), self.intersection,
                          self.total])

    @classmethod
    def from_vector(cls, vector: torch.Tensor) -> LossSums:
        classes = (vector.numel() - 2) // 2
        return cls(vector[0], vector[1], vector[2:2 + classes], vector[2 + classes:])


def loss_sums(logits: torch.Tensor, target: torch.Tensor, pixel_weights: torch.Tensor | None = None) -> LossSums:
    """The :class:`LossSums` of logits [B, K, H, W] against a target [B, H, W] (0/1, or class labels for K > 1)."""
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise InputError(f"loss: logits {tuple(logits.shape)} do not match the target {tuple(target.shape)}")
    classes = logits.shape[1]
    if classes == 1:
        t = target.float()[:, None]
        ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")[:, 0]
        probs, onehot = torch.sigmoid(logits), t
    else:
        labels = target.long()
        ce = F.cross_entropy(logits, labels, reduction="none")
        probs = torch.softmax(logits, dim=1)
        onehot = F.one_hot(labels.clamp(0, classes - 1), classes).permute(0, 3, 1, 2).float()
    if pixel_weights is not None:
        ce = ce * pixel_weights.to(ce)
    dims = (0, 2, 3)
    return LossSums(ce.sum(), torch.tensor(float(ce.numel()), device=ce.device), (probs * onehot).sum(dims),
                    probs.sum(dims) + onehot.sum(dims))


def loss_from_sums(sums: LossSums, kind: str = "ce+dice", dice_weight: float = 1.0, eps: float = 1.0) -> torch.Tensor:
    """The loss ``kind`` from a batch's sums: mean cross-entropy and/or the soft Dice loss (see soft_dice_loss)."""
    if kind not in LOSSES:
        raise InputError(f"unknown loss {kind!r}; expected one of {list(LOSSES)}")
    total = sums.ce_sum.new_zeros(())
    if kind in ("ce+dice", "ce"):
        total = total + sums.ce_sum / sums.pixels
    if kind in ("ce+dice", "dice"):
        total = total + dice_weight * (1.0 - (2 * sums.intersection + eps) / (sums.total + eps)).mean()
    return total


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "ce+dice",
                      pixel_weights: torch.Tensor | None = None, dice_weight: float = 1.0) -> torch.Tensor:
    """The training loss of logits [B, K, H, W] against a target [B, H, W] (0/1, or class labels for K > 1).

    ``pixel_weights`` [B, H, W] (e.g. the border weight map) weights the cross-entropy term.
    The loss is a function of sums over the batch (:func:`loss_sums`, :func:`loss_from_sums`).
    """
    if kind not in LOSSES:
        raise InputError(f"unknown loss {kind!r}; expected one of {list(LOSSES)}")
    return loss_from_sums(loss_sums(logits, target, pixel_weights), kind, dice_weight)
