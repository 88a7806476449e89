"""Volume nodes: Synthetic Volume Data -> (new) unet3d -> Train (volumes) -> Segment Volume, and refusals."""

from __future__ import annotations

import pytest
import torch

from unet_lab.nodes.segmentation import UNetLabLoadSegmentationUNet, UNetLabSegmentImage
from unet_lab.nodes.segmentation_train import UNetLabTrainSegmentationUNet
from unet_lab.nodes.segmentation_volume import UNetLabSegmentVolume, UNetLabSyntheticVolumeData
from unet_lab.unet_core.errors import InputError, SegmentationError


def test_new_models_offered_include_unet3plus_and_unet3d():
    choices = UNetLabLoadSegmentationUNet.INPUT_TYPES()["required"]["model_name"][0]
    assert "(new) unet3plus" in choices and "(new) unet3d" in choices


def test_synthetic_volumes_node_splits_and_shapes():
    node = UNetLabSyntheticVolumeData()
    vols, masks, depth = node.make(count=2, depth=6, size=16, seed=1)
    assert vols.shape == (12, 16, 16, 3) and masks.shape == (12, 16, 16) and depth == 6
    other, _, _ = node.make(count=2, depth=6, size=16, seed=1, split="validation")
    assert not torch.equal(vols, other)


def test_train_and_segment_a_volume_end_to_end(standalone_host):
    vols, masks, depth = UNetLabSyntheticVolumeData().make(count=3, depth=8, size=24, seed=0)
    seg, info = UNetLabLoadSegmentationUNet().load("(new) unet3d", depth=2, base_channels=4)
    assert "unet3d" in info and seg.model.in_channels == 1
    calls = []
    standalone_host.progress = lambda total, node_id=None: (lambda d, t, m="": calls.append((d, t)))
    out = UNetLabTrainSegmentationUNet().train(seg, steps=3, batch_size=2, images=vols, masks=masks,
                                               volume_depth=depth, patch_depth=8, patch_size=16,
                                               validation_fraction=0.34, filename_prefix="vol/test")
    trained, report = out["result"]
    assert "held-out Dice" in report and "saved to" in report
    assert not any(torch.equal(a, b) for a, b in zip(trained.model.parameters(), seg.model.parameters(), strict=True))
    result = UNetLabSegmentVolume().segment(trained, vols[:depth], patch_depth=8, patch_size=16,
                                            ground_truth=masks[:depth])
    mask, prob, tinted, text = result["result"]
    assert mask.shape == prob.shape == (depth, 24, 24) and tinted.shape == (depth, 24, 24, 3)
    assert "Dice" in text and calls and calls[-1][0] == calls[-1][1]


def test_segment_volume_refuses_a_2d_model_and_segment_image_a_3d_one(standalone_host):
    seg2d, _ = UNetLabLoadSegmentationUNet().load("(new) unet", depth=1, base_channels=4)
    with pytest.raises(SegmentationError, match="2D unet but the input is a volume"):
        UNetLabSegmentVolume().segment(seg2d, torch.rand(4, 16, 16, 3))
    seg3d, _ = UNetLabLoadSegmentationUNet().load("(new) unet3d", depth=1, base_channels=4)
    with pytest.raises(SegmentationError, match="3D unet3d .* use Segment Volume"):
        UNetLabSegmentImage().segment(seg3d, torch.rand(1, 16, 16, 3))


def test_one_slice_image_through_segment_volume(standalone_host):
    seg, _ = UNetLabLoadSegmentationUNet().load("(new) unet3d", depth=2, base_channels=4)
    mask, _, _, text = UNetLabSegmentVolume().segment(seg, torch.rand(1, 20, 28, 3), patch_size=16)["result"]
    assert mask.shape == (1, 20, 28) and "volume 1 x 20 x 28" in text


def test_volume_training_needs_whole_volumes(standalone_host):
    vols, masks, _ = UNetLabSyntheticVolumeData().make(count=1, depth=6, size=16)
    seg, _ = UNetLabLoadSegmentationUNet().load("(new) unet3d", depth=1, base_channels=4)
    with pytest.raises(InputError, match="not a multiple of volume_depth 4"):
        UNetLabTrainSegmentationUNet().train(seg, steps=1, images=vols, masks=masks, volume_depth=4)
