"""Patch sampling: uniform crops cover the image, foreground oversampling as configured, weights cropped alike."""

from __future__ import annotations

import pytest
import torch

from unet_lab.unet_core.errors import InputError
from unet_lab.unet_core.segmentation.training.patches import PatchSampler, default_patch_size, hold_out_tile


def _sparse(height=60, width=80):
    image = torch.rand(height, width, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(height, width)
    mask[5:9, 60:66] = 1  # one small object: 24 of 4800 pixels
    return image, mask


def test_uniform_patches_cover_every_pixel_and_match_their_origin():
    image, mask = _sparse()
    weights = torch.arange(60 * 80, dtype=torch.float32).view(60, 80)
    sampler = PatchSampler([image], [mask], (16, 24), foreground_fraction=0.0, weights=[weights])
    generator = torch.Generator().manual_seed(1)
    covered = torch.zeros(60, 80)
    for _ in range(150):
        batch = sampler.sample(8, generator)
        assert batch.images.shape == (8, 3, 16, 24) and batch.masks.shape == (8, 16, 24)
        for k, (_, y, x) in enumerate(batch.origins):
            assert torch.equal(batch.images[k], image[y:y + 16, x:x + 24].permute(2, 0, 1))
            assert torch.equal(batch.masks[k], mask[y:y + 16, x:x + 24])
            assert torch.equal(batch.weights[k], weights[y:y + 16, x:x + 24])
            covered[y:y + 16, x:x + 24] += 1
        assert not any(batch.centred)
    assert bool((covered > 0).all())
    # clamped origins: every pixel is covered with probability (16/75) * (24/103) per patch
    expected = 1200 * (16 / 75) * (24 / 103)
    for corner in (covered[0, 0], covered[0, -1], covered[-1, 0], covered[-1, -1], covered[30, 40]):
        assert abs(float(corner) - expected) < 5 * expected ** 0.5


@pytest.mark.parametrize(("fraction", "batch", "forced"), [(0.33, 3, 1), (0.5, 4, 2), (1.0, 5, 5), (0.0, 6, 0)])
def test_foreground_oversampling_follows_the_fraction(fraction, batch, forced):
    image, mask = _sparse()
    sampler = PatchSampler([image], [mask], (16, 16), foreground_fraction=fraction)
    generator = torch.Generator().manual_seed(2)
    with_foreground = uniform_hits = uniform_total = 0
    for _ in range(100):
        out = sampler.sample(batch, generator)
        assert out.centred == [False] * (batch - forced) + [True] * forced
        for k in range(batch):
            hit = bool(out.masks[k].any())
            if out.centred[k]:
                with_foreground += hit
            else:
                uniform_hits += hit
                uniform_total += 1
    assert with_foreground == 100 * forced  # every centred patch holds foreground
    if uniform_total:
        # a uniform 16x16 crop of this 60x80 image holds the object for about 11 % of origins
        assert uniform_hits / uniform_total < 0.25


def test_image_without_foreground_falls_back_to_uniform_crops():
    image, mask = _sparse()
    sampler = PatchSampler([image], [torch.zeros_like(mask)], (8, 8), foreground_fraction=1.0)
    out = sampler.sample(4, torch.Generator().manual_seed(0))
    assert out.centred == [False] * 4


def test_same_seed_same_batches_and_patch_defaults():
    image, mask = _sparse()
    sampler = PatchSampler([image, image.flip(0)], [mask, mask.flip(0)], (16, 16), 0.5)
    a = sampler.sample(6, torch.Generator().manual_seed(5))
    b = sampler.sample(6, torch.Generator().manual_seed(5))
    assert a.origins == b.origins and torch.equal(a.images, b.images)
    assert default_patch_size([512, 600], [512, 700], "cpu") == (128, 128)
    assert default_patch_size([512], [512], "cuda") == (256, 256)
    assert default_patch_size([100], [64], "cuda") == (100, 64)
    with pytest.raises(InputError, match="smaller than"):
        PatchSampler([image], [mask], (61, 8))


def test_hold_out_tile_splits_without_overlap():
    image, mask = _sparse(60, 80)
    split = hold_out_tile(image, mask, 0.25)
    assert split.train_image.shape == (60, 60, 3) and split.val_image.shape == (60, 20, 3)
    assert torch.equal(torch.cat([split.train_mask, split.val_mask], 1), mask)
    assert "right 20 of 80" in split.description
    tall = hold_out_tile(image.transpose(0, 1), mask.T, 0.2)
    assert tall.train_mask.shape == (64, 60) and tall.val_mask.shape == (16, 60)
    with pytest.raises(InputError, match="too small"):
        hold_out_tile(image[:20, :20], mask[:20, :20], 0.2)
