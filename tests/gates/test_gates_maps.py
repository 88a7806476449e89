"""Recorded gate maps -> MASK batch."""

from __future__ import annotations

import pytest
import torch

from fixtures_gates import reference_energy_alpha, tiny_config


def _run(floor=0.2, cond_or_uncond=(1, 0)):
    from unet_lab.unet_core.gates.skip_gate import GateMapRecorder, SkipGatePatch, build_settings

    config = tiny_config("sd1")  # L=1: blocks 6, 7 at level 0 (latent size), 4, 5 at level 1 (half)
    recorder = GateMapRecorder(config)
    patch = SkipGatePatch(build_settings(config, 0.5, levels="0, 1", floor=floor), recorder=recorder)
    gen = torch.Generator().manual_seed(0)
    feats = {}
    for block, size in ((4, 4), (5, 4), (6, 8), (7, 8)):
        h = torch.randn(4, 16, size, size, generator=gen)
        hsp = torch.randn(4, 8, size, size, generator=gen).abs() * torch.arange(1, size + 1)
        feats[block] = (h, hsp)
        patch(h, hsp, {"block": ("output", block), "cond_or_uncond": list(cond_or_uncond)})
    patch(*feats[4], {"block": ("output", 0)})  # level 3: not chosen, not recorded
    return recorder, feats


def test_per_block_masks_are_the_gate_maps():
    from unet_lab.unet_core.gates.maps import maps_to_mask

    recorder, feats = _run(floor=0.2)
    masks, labels = maps_to_mask(recorder, levels=(0,), passes="cond", size="latent")
    # blocks 6 and 7, cond rows (2, 3 of the batch: cond_or_uncond = [1, 0])
    assert masks.shape == (4, 8, 8) and masks.dtype == torch.float32 and len(labels) == 4
    for i, block in enumerate((6, 7)):
        h, hsp = feats[block]
        expected = 0.2 + 0.8 * reference_energy_alpha(h, hsp)[2:, 0]
        torch.testing.assert_close(masks[2 * i:2 * i + 2].double(), expected, atol=1e-5, rtol=1e-5)
    assert labels[0].startswith("output block 6 (level 0, 1/8) cond row 0")
    assert masks.min() >= 0.2 - 1e-6 and masks.max() <= 1.0


def test_image_size_mean_and_passes():
    from unet_lab.unet_core.gates.maps import maps_to_mask

    recorder, _ = _run()
    masks, labels = maps_to_mask(recorder, passes="all", size="image")
    assert masks.shape == (4 * 2 * 2, 64, 64)  # blocks 4-7, uncond + cond, 2 rows each; 8x latent size
    assert not any("block 0 " in label for label in labels)
    mean, mean_labels = maps_to_mask(recorder, passes="uncond", combine="mean", size="latent")
    per_block, _ = maps_to_mask(recorder, passes="uncond", size="latent")
    assert mean.shape == (2, 8, 8) and len(mean_labels) == 2
    torch.testing.assert_close(mean, per_block.reshape(4, 2, 8, 8).mean(0))


def test_missing_recording_is_a_clear_error():
    from unet_lab.unet_core.errors import GateError
    from unet_lab.unet_core.gates.maps import maps_to_mask
    from unet_lab.unet_core.gates.skip_gate import GateMapRecorder

    with pytest.raises(GateError, match="record_maps off"):
        maps_to_mask(None)
    with pytest.raises(GateError, match="no sampling has run"):
        maps_to_mask(GateMapRecorder())
