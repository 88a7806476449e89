"""The segmentation nodes through a standalone host, and the shipped demo workflow."""

from __future__ import annotations

import json

import pytest
import torch

from fixtures_segpipe import PointwiseNet, plain_meta
from pack_support import REPO_ROOT
from unet_lab.nodes.segmentation import (
    NODE_CLASS_MAPPINGS,
    UNetLabLoadSegmentationUNet,
    UNetLabSaveSegmentationUNet,
    UNetLabSegmentImage,
    UNetLabSyntheticSegmentationData,
    UNetLabTrainSegmentationUNet,
)
from unet_lab.unet_core.errors import InputError
from unet_lab.unet_core.segmentation.checkpoint import load_segmentation
from unet_lab.unet_core.segmentation.model import SegUNet

WORKFLOW = REPO_ROOT / "workflows" / "unet_lab_segmentation_training.json"


def _new(depth=2, base=4, classes=1):
    seg, info = UNetLabLoadSegmentationUNet().load("(new) unet", depth=depth, base_channels=base, classes=classes)
    assert "unet" in info
    return seg


@pytest.mark.parametrize("height,width", [(97, 131), (375, 500)])
def test_segment_node_outputs(standalone_host, height, width):
    seg = _new()
    images = torch.rand(2, height, width, 3)
    calls = []
    standalone_host.progress = lambda total, node_id=None: (lambda d, t, m="": calls.append((d, t)))
    out = UNetLabSegmentImage().segment(seg, images, tile_size=128, overlap=0.25)
    mask, prob, tinted, report = out["result"]
    for m in (mask, prob):
        assert m.shape == (2, height, width) and m.dtype == torch.float32
        assert float(m.min()) >= 0 and float(m.max()) <= 1
    assert tinted.shape == (2, height, width, 3)
    assert calls and calls[-1][0] == calls[-1][1]  # progress reached its total
    assert "tile" in report and out["ui"]["text"] == [report]


def test_segment_node_reports_dice_against_ground_truth(standalone_host):
    net = PointwiseNet(seed=3)
    seg = SegUNet(net, plain_meta(), "pointwise")
    images = torch.rand(1, 20, 30, 3)
    with torch.no_grad():
        predicted = (torch.sigmoid(net(images.permute(0, 3, 1, 2)))[:, 0] >= 0.5).float()
    truth = predicted.clone()
    truth[0, :5] = 1 - truth[0, :5]  # flip 5 of 20 rows
    inter = float((predicted * truth).sum())
    expected = 2 * inter / float(predicted.sum() + truth.sum())
    report = UNetLabSegmentImage().segment(seg, images, ground_truth=truth)["result"][3]
    assert f"Dice {expected:.4f}" in report
    with pytest.raises(InputError, match="ground_truth"):
        UNetLabSegmentImage().segment(seg, images, ground_truth=truth[:, :10])
    with pytest.raises(InputError, match="not a SEG_UNET"):
        UNetLabSegmentImage().segment("model.safetensors", images)


def test_train_node_saves_numbered_files_and_leaves_its_input_alone(standalone_host):
    seg = _new()
    before = {k: v.clone() for k, v in seg.model.state_dict().items()}
    images, masks = UNetLabSyntheticSegmentationData().make(count=6, size=32, seed=1, split="train")
    node = UNetLabTrainSegmentationUNet()
    out = node.train(seg, steps=2, batch_size=2, filename_prefix="runs/seg", images=images, masks=masks)
    trained, report = out["result"]
    assert "Dice" in report and "saved to" in report
    assert all(torch.equal(before[k], v) for k, v in seg.model.state_dict().items())  # input untouched
    assert any(not torch.equal(before[k], v) for k, v in trained.model.state_dict().items())
    node.train(seg, steps=1, batch_size=2, filename_prefix="runs/seg", images=images, masks=masks)
    folder = standalone_host.save_directory("unet_segmentation") / "runs"
    assert sorted(p.name for p in folder.iterdir()) == ["seg_00001_.safetensors", "seg_00002_.safetensors"]
    model, meta = load_segmentation(folder / "seg_00001_.safetensors")
    state = trained.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # the saved file appears in the loader's list and loads through the node
    choices = UNetLabLoadSegmentationUNet.INPUT_TYPES()["required"]["model_name"][0]
    assert "runs/seg_00001_.safetensors" in choices
    loaded, _ = UNetLabLoadSegmentationUNet().load("runs/seg_00001_.safetensors")
    assert loaded.meta.class_names == ["foreground"]
    path = UNetLabSaveSegmentationUNet().save(loaded, "runs/seg")["result"][0]
    assert path.endswith("seg_00003_.safetensors")
    with pytest.raises(InputError, match="no '..'"):
        UNetLabSaveSegmentationUNet().save(loaded, "../escape")


def test_train_node_input_errors(standalone_host, tmp_path):
    seg = _new()
    images, masks = UNetLabSyntheticSegmentationData().make(count=4, size=32, seed=1)
    node = UNetLabTrainSegmentationUNet()
    with pytest.raises(InputError, match="connect 'images' \\+ 'masks'"):
        node.train(seg, steps=1, filename_prefix="")
    with pytest.raises(InputError, match="connect both"):
        node.train(seg, steps=1, filename_prefix="", images=images)
    with pytest.raises(InputError, match="must match"):
        node.train(seg, steps=1, filename_prefix="", images=images, masks=masks[:, :20])
    with pytest.raises(InputError, match="inside the input folder"):
        node.train(seg, steps=1, filename_prefix="", folder="../../etc")


def test_synthetic_node_splits_differ():
    node = UNetLabSyntheticSegmentationData()
    train, _ = node.make(count=3, size=32, seed=0, split="train")
    test, test_masks = node.make(count=3, size=32, seed=0, split="test")
    again, _ = node.make(count=3, size=32, seed=0, split="test")
    assert not torch.equal(train, test) and torch.equal(test, again)
    assert test_masks.shape == (3, 32, 32)


def test_demo_workflow_is_valid_and_wired_as_described():
    from unet_lab.nodes.host.headless import node_classes
    from unet_lab.unet_core.graph.execute import Executor

    data = json.loads(WORKFLOW.read_text())
    assert data["version"] == 0.4 and data["last_node_id"] == max(n["id"] for n in data["nodes"])
    assert data["last_link_id"] == max(link[0] for link in data["links"])
    types = sorted(n["type"] for n in data["nodes"])
    assert types.count("SaveImage") == 2 and "MaskToImage" in types and "Note" in types
    executor = Executor(node_classes())
    prompt, _ = executor.to_prompt(data, source=str(WORKFLOW))
    check = executor.validate(prompt)
    assert check.valid, check.summary()
    by_type = {}
    for node in prompt.values():
        by_type.setdefault(node["class_type"], []).append(node["inputs"])
    splits = sorted(inputs["split"] for inputs in by_type["UNetLabSyntheticSegmentationData"])
    assert splits == ["test", "train"]
    train = by_type["UNetLabTrainSegmentationUNet"][0]
    assert train["steps"] == 150 and train["images"][1] == 0 and train["masks"][1] == 1
    segment = by_type["UNetLabSegmentImage"][0]
    assert segment["ground_truth"][1] == 1 and segment["seg_unet"][1] == 0
    assert set(NODE_CLASS_MAPPINGS) >= {n["type"] for n in data["nodes"] if n["type"].startswith("UNetLab")}


@pytest.mark.parametrize("architecture", ["unet", "unet_plus_plus", "attention_unet", "residual_unet"])
def test_every_new_architecture_segments_odd_sizes(standalone_host, architecture):
    seg, _ = UNetLabLoadSegmentationUNet().load(f"(new) {architecture}", depth=2, base_channels=4, classes=2)
    images = torch.rand(1, 37, 53, 3)
    mask, prob, tinted, _ = UNetLabSegmentImage().segment(seg, images, tile_size=32, class_mode="all")["result"]
    assert mask.shape == (2, 37, 53) and prob.shape == (2, 37, 53) and tinted.shape == (1, 37, 53, 3)
    torch.testing.assert_close(prob.sum(0), torch.ones(37, 53), atol=1e-5, rtol=0)  # softmax planes


def test_train_node_with_separate_validation_set(standalone_host):
    seg = _new()
    images, masks = UNetLabSyntheticSegmentationData().make(count=4, size=32, seed=1, split="train")
    val_images, val_masks = UNetLabSyntheticSegmentationData().make(count=2, size=40, seed=1, split="validation")
    out = UNetLabTrainSegmentationUNet().train(seg, steps=1, batch_size=2, filename_prefix="", images=images,
                                               masks=masks, validation_images=val_images,
                                               validation_masks=val_masks)
    trained, report = out["result"]
    assert report.startswith("held-out Dice") and "2 separate validation image(s)" in report
    assert "saved" not in report
    trained.model.eval()
    with torch.no_grad():
        pred = (trained.model(val_images.permute(0, 3, 1, 2)) > 0).float()[:, 0]
    dice = 2 * float((pred * val_masks).sum()) / max(float(pred.sum() + val_masks.sum()), 1e-9)
    assert f"held-out Dice {dice:.4f}" in report
