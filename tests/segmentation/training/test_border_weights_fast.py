"""The fast border weight map against the direct formula, pixel by pixel, on small masks.

Reference: for every pixel, the Euclidean distance to every pixel of every object (objects from a
flood fill here), the two smallest per-object minima d1 <= d2, and
w = w_c + w0 exp(-(d1 + d2)^2 / (2 sigma^2)) on background pixels of masks with two or more objects.
"""

from __future__ import annotations

import numpy as np
import pytest

from fixtures_segpipe import flood_components as _flood
from unet_lab.unet_core.segmentation.training.border_weights import (
    border_reach,
    border_weight_map,
    connected_components,
    distance_transform,
)


def _direct(labels: np.ndarray, objects: np.ndarray, count: int, w0: float, sigma: float) -> np.ndarray:
    """The paper's formula with brute-force distances from every pixel to every object pixel."""
    h, w = labels.shape
    classes, counts = np.unique(labels, return_counts=True)
    weights = np.zeros((h, w))
    for c, n in zip(classes, counts, strict=True):
        weights[labels == c] = labels.size / (len(classes) * n)
    if count < 2:
        return weights
    yy, xx = np.mgrid[0:h, 0:w]
    per_object = []
    for k in range(1, count + 1):
        oy, ox = np.nonzero(objects == k)
        d = np.sqrt((yy[..., None] - oy) ** 2 + (xx[..., None] - ox) ** 2).min(axis=-1)
        per_object.append(d)
    d = np.sort(np.stack(per_object), axis=0)
    border = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma ** 2))
    return weights + np.where(labels == 0, border, 0.0)


def _discs(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), bool)
    for _ in range(count):
        r = rng.uniform(2, 6)
        cy, cx = rng.uniform(0, size, 2)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return mask


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("w0", "sigma"), [(10.0, 5.0), (5.0, 2.0), (10.0, 12.0)])
def test_matches_the_direct_formula(seed, w0, sigma):
    rng = np.random.default_rng(seed)
    mask = _discs(rng, 40, 7)
    objects, count = _flood(mask)
    assert count >= 2
    expected = _direct(mask.astype(int), objects, count, w0, sigma)
    got = border_weight_map(mask.astype(np.float32), w0=w0, sigma=sigma)
    assert got.dtype == np.float32 and got.shape == mask.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_random_speckle_and_multiclass_labels_match():
    rng = np.random.default_rng(7)
    labels = (rng.random((23, 31)) < 0.3) * rng.integers(1, 4, (23, 31))  # classes 1..3, many tiny objects
    objects, count = _flood(labels > 0)
    expected = _direct(labels, objects, count, 10.0, 5.0)
    np.testing.assert_allclose(border_weight_map(labels), expected, rtol=0, atol=1e-5)


def test_instances_keep_touching_objects_apart():
    labels = np.zeros((20, 30), int)
    labels[5:15, 3:15] = 1
    labels[5:15, 15:27] = 2  # touches object 1: one connected component
    mask = labels > 0
    merged = border_weight_map(mask)
    split = border_weight_map(mask, instances=labels)
    assert np.allclose(merged, _direct(mask.astype(int), *_flood(mask), 10.0, 5.0), atol=1e-5)
    assert np.allclose(split, _direct(mask.astype(int), labels, 2, 10.0, 5.0), atol=1e-5)
    assert split[4, 15] > merged[4, 15] + 1  # the gap above the contact gets the border term


def test_one_object_or_none_gets_class_balance_only():
    mask = np.zeros((16, 16))
    assert np.allclose(border_weight_map(mask), 1.0)
    mask[4:8, 4:8] = 1
    got = border_weight_map(mask)
    assert np.allclose(got[mask == 1], 256 / (2 * 16)) and np.allclose(got[mask == 0], 256 / (2 * 240))
    assert np.allclose(border_weight_map(mask, class_balance=False), 1.0)


def test_components_and_distance_transform_match_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(5):
        mask = rng.random((17, 21)) < 0.35
        labels, count = connected_components(mask)
        ref, ref_count = _flood(mask)
        assert count == ref_count
        assert len(set(zip(labels.ravel().tolist(), ref.ravel().tolist(), strict=True))) == count + 1
        yy, xx = np.mgrid[0:17, 0:21]
        oy, ox = np.nonzero(mask)
        brute = np.sqrt((yy[..., None] - oy) ** 2 + (xx[..., None] - ox) ** 2).min(axis=-1)
        np.testing.assert_allclose(distance_transform(mask), brute, atol=1e-6)
    assert np.isinf(distance_transform(np.zeros((3, 4), bool))).all()


def test_reach_is_where_the_term_falls_below_tolerance():
    reach = border_reach(10.0, 5.0, 1e-7)
    assert 10.0 * np.exp(-reach ** 2 / (2 * 25.0)) == pytest.approx(1e-7)
