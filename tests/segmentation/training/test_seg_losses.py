"""Losses, border weights (components, distance transform), metrics and augmentation, against references here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fixtures_segpipe import flood_components as _flood_components
from unet_lab.unet_core.segmentation.metrics import dice_score, iou_score
from unet_lab.unet_core.segmentation.training.augment import (
    AugmentConfig,
    apply_displacement,
    augment_batch,
    elastic_field,
)
from unet_lab.unet_core.segmentation.training.border_weights import (
    border_weight_map,
    connected_components,
)
from unet_lab.unet_core.segmentation.training.border_weights import distance_transform as distance_to
from unet_lab.unet_core.segmentation.training.losses import segmentation_loss


def _random_mask(rng, shape, p):
    return rng.random(shape) < p


def _same_partition(a, b):
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist(), strict=True))
    return len(pairs) == len(set(a.ravel().tolist())) == len(set(b.ravel().tolist()))


@pytest.mark.parametrize("connectivity", [4, 8])
def test_connected_components_match_flood_fill(connectivity):
    rng = np.random.default_rng(0)
    for _ in range(6):
        mask = _random_mask(rng, (13, 17), 0.45)
        got, n = connected_components(mask, connectivity)
        ref, m = _flood_components(mask, connectivity)
        assert n == m
        assert _same_partition(got, ref)
        assert ((got > 0) == mask).all()


def test_distance_transform_is_exact():
    rng = np.random.default_rng(1)
    for shape, p in (((11, 9), 0.1), ((7, 23), 0.03), ((16, 16), 0.3)):
        mask = _random_mask(rng, shape, p)
        mask[rng.integers(shape[0]), rng.integers(shape[1])] = True
        points = np.argwhere(mask)
        ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
        brute = np.sqrt(((ys[..., None] - points[:, 0]) ** 2 + (xs[..., None] - points[:, 1]) ** 2).min(-1))
        np.testing.assert_allclose(distance_to(mask), brute, atol=1e-9)
    assert np.isinf(distance_to(np.zeros((3, 3), bool))).all()


def test_border_weight_map_matches_the_paper_formula():
    mask = np.zeros((12, 20), np.int64)
    mask[2:6, 2:7] = 1      # object A
    mask[3:9, 9:12] = 1     # object B, 2 px gap to A
    mask[10:12, 15:20] = 1  # object C
    got = border_weight_map(mask, w0=10.0, sigma=5.0)
    # reference, pixel by pixel: distances to every object by brute force
    objects = [np.argwhere(_flood_components(mask > 0, 8)[0] == k) for k in (1, 2, 3)]
    frac_fg = (mask > 0).mean()
    wc = {1: 1 / (2 * frac_fg), 0: 1 / (2 * (1 - frac_fg))}
    expected = np.zeros(mask.shape)
    for y in range(mask.shape[0]):
        for x in range(mask.shape[1]):
            d = sorted(min(math.hypot(y - py, x - px) for py, px in pts) for pts in objects)
            w = wc[int(mask[y, x])]
            if mask[y, x] == 0:
                w += 10.0 * math.exp(-((d[0] + d[1]) ** 2) / (2 * 5.0 ** 2))
            expected[y, x] = w
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the gap between A and B weighs much more than open background
    assert got[4, 8] > 5 and got[11, 0] < 2
    # one object: no border term, class balance only
    single = border_weight_map((np.arange(36).reshape(6, 6) < 12).astype(int))
    np.testing.assert_allclose(np.unique(single), sorted({1 / (2 * 1 / 3), 1 / (2 * 2 / 3)}), rtol=1e-6)


def test_losses_match_their_formulas():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 5, 6)
    target = (torch.rand(2, 5, 6) > 0.5).float()
    p = torch.sigmoid(logits[:, 0])
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    torch.testing.assert_close(segmentation_loss(logits, target, "ce"), bce, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(segmentation_loss(logits, target, "dice"), dice, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(segmentation_loss(logits, target, "ce+dice"), bce + dice, atol=1e-6, rtol=1e-5)
    weights = torch.rand(2, 5, 6) * 3
    wbce = (weights * -(target * torch.log(p) + (1 - target) * torch.log(1 - p))).mean()
    torch.testing.assert_close(segmentation_loss(logits, target, "ce", pixel_weights=weights), wbce,
                               atol=1e-6, rtol=1e-5)
    # multi-class: softmax cross-entropy + mean over classes of the soft Dice
    logits3 = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    q = torch.softmax(logits3, 1)
    ce = -torch.log(q.gather(1, labels[:, None])).mean()
    onehot = torch.stack([(labels == k).float() for k in range(3)], 1)
    dices = [1 - (2 * (q[:, k] * onehot[:, k]).sum() + 1) / (q[:, k].sum() + onehot[:, k].sum() + 1) for k in range(3)]
    torch.testing.assert_close(segmentation_loss(logits3, labels, "ce+dice"), ce + sum(dices) / 3,
                               atol=1e-6, rtol=1e-5)


def test_dice_and_iou():
    pred = torch.tensor([[1, 1, 0, 0]], dtype=torch.float32)
    truth = torch.tensor([[1, 0, 1, 0]], dtype=torch.float32)
    assert float(dice_score(pred, truth)) == pytest.approx(2 * 1 / 4)
    assert float(iou_score(pred, truth)) == pytest.approx(1 / 3)
    assert float(dice_score(torch.zeros(3), torch.zeros(3))) == 1.0
    per = dice_score(torch.stack([pred[0], truth[0]]), torch.stack([truth[0], truth[0]]), per_image=True)
    torch.testing.assert_close(per, torch.tensor([0.5, 1.0], dtype=torch.float64))


# -- augmentation ----------------------------------------------------------------------------------
def _pairs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(4, 3, 24, 24, generator=gen)
    masks = (images[:, 0] > 0.5).float()  # the mask is a function of the image's first channel
    return images, masks


def test_augment_is_deterministic_and_keeps_image_and_mask_aligned():
    images, masks = _pairs()
    config = AugmentConfig(brightness=0.0, contrast=0.0)  # geometric only
    a = augment_batch(images, masks, config, torch.Generator().manual_seed(5))
    b = augment_batch(images, masks, config, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = augment_batch(images, masks, config, torch.Generator().manual_seed(6))
    assert not torch.equal(a[0], c[0])
    assert torch.equal(a[1], (a[0][:, 0] > 0.5).float())  # flips/rotations moved both alike
    assert not torch.equal(a[0], images)


def test_weight_maps_move_with_their_masks():
    images, masks = _pairs()
    weights = masks * 4 + 1 + torch.linspace(0, 0.5, 24)[None, None, :]  # distinct per column
    config = AugmentConfig(brightness=0.0, contrast=0.0)
    out, out_masks, out_weights = augment_batch(images, masks, config, torch.Generator().manual_seed(5), weights)
    plain = augment_batch(images, masks, config, torch.Generator().manual_seed(5))
    assert torch.equal(out, plain[0]) and torch.equal(out_masks, plain[1]) and plain[2] is None
    assert torch.equal(torch.floor((out_weights - 1) / 4), out_masks)  # the mask part moved with the mask
    for k in range(len(images)):
        assert any(torch.equal(out_weights[k], torch.rot90(w, r, (-2, -1)))
                   for f in (weights[k], weights[k].flip(-1), weights[k].flip(-2), weights[k].flip(-1).flip(-2))
                   for r in range(4) for w in [f])
    _, _, warped = augment_batch(images, masks, AugmentConfig(elastic=True, elastic_p=1.0),
                                 torch.Generator().manual_seed(2), weights)
    assert warped.shape == weights.shape and float(warped.min()) >= 1.0


def test_brightness_contrast_touch_the_image_only():
    images, masks = _pairs()
    config = AugmentConfig(flips=False, rotate90=False, brightness=0.2, contrast=0.2)
    out, out_masks, _ = augment_batch(images, masks, config, torch.Generator().manual_seed(1))
    assert torch.equal(out_masks, masks)
    assert not torch.allclose(out, images)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_elastic_deformation():
    images, masks = _pairs()
    field = elastic_field(24, 24, alpha=3.0, sigma=4.0, generator=torch.Generator().manual_seed(0))
    assert field.shape == (2, 24, 24)
    assert float(field.abs().max()) == pytest.approx(3.0, rel=1e-5)
    # smooth: neighbouring displacements differ far less than the displacement itself
    assert float((field[:, 1:] - field[:, :-1]).abs().max()) < 1.0
    # zero field: identity
    same_img, same_mask = apply_displacement(images[0], masks[0], torch.zeros(2, 24, 24))
    torch.testing.assert_close(same_img, images[0], atol=1e-5, rtol=0)
    assert torch.equal(same_mask, masks[0])
    # a constant whole-pixel shift: out(y, x) = in(y + 2, x - 1) inside the image
    shift = torch.zeros(2, 24, 24)
    shift[0], shift[1] = 2.0, -1.0
    img, msk = apply_displacement(images[0], masks[0], shift)
    torch.testing.assert_close(img[:, :22, 1:], images[0][:, 2:, :23], atol=1e-5, rtol=0)
    assert torch.equal(msk[:22, 1:], masks[0][2:, :23])
    # a random field keeps masks binary (nearest) and matches F.grid_sample's bilinear reference
    warped, warped_mask = apply_displacement(images[0], masks[0], field)
    assert set(warped_mask.unique().tolist()) <= {0.0, 1.0}
    ys = torch.arange(24.0)[:, None] + field[0]
    xs = torch.arange(24.0)[None, :] + field[1]
    grid = torch.stack([xs / 23 * 2 - 1, ys / 23 * 2 - 1], -1)[None]
    ref = F.grid_sample(images[0][None], grid, mode="bilinear", padding_mode="reflection", align_corners=True)[0]
    torch.testing.assert_close(warped, ref)
    out = augment_batch(images, masks, AugmentConfig(elastic=True, elastic_p=1.0), torch.Generator().manual_seed(2))
    again = augment_batch(images, masks, AugmentConfig(elastic=True, elastic_p=1.0), torch.Generator().manual_seed(2))
    assert torch.equal(out[0], again[0]) and torch.equal(out[1], again[1])
