"""What a biologist meets with real files: 16-bit pairs, one image, bad prefixes, file modes, outlines."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_imaging import nuclei_like
from unet_lab.nodes import segmentation_train
from unet_lab.nodes.host import standalone_nodes
from unet_lab.nodes.segmentation import (
    UNetLabLoadSegmentationUNet,
    UNetLabSaveSegmentationUNet,
    UNetLabTrainSegmentationUNet,
)
from unet_lab.unet_core.errors import InputError
from unet_lab.unet_core.segmentation.components import connected_components, object_outlines
from unet_lab.unet_core.segmentation.inference.outputs import overlay
from unet_lab.unet_core.segmentation.registry import build_model
from unet_lab.unet_core.segmentation.training.data import load_pair_folder
from unet_lab.unet_core.segmentation.training.loop import TrainConfig, evaluate_dice, train_segmentation


def _new_seg():
    return UNetLabLoadSegmentationUNet().load("(new) unet", depth=2, base_channels=4, classes=1)[0]


def _pairs(folder, bits: int, seeds=(0, 1, 2)):
    (folder / "masks").mkdir(parents=True)
    for seed in seeds:
        image, labels = nuclei_like(size=64, seed=seed)
        pixels = image if bits == 16 else (image >> 8).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"n{seed}.png")
        Image.fromarray(labels).save(folder / "masks" / f"n{seed}.tif")


def test_a_16_bit_image_trains_and_segments_as_well_as_its_8_bit_copy(tmp_path):
    _pairs(tmp_path / "p16", 16)
    _pairs(tmp_path / "p8", 8)
    data16, data8 = load_pair_folder(tmp_path / "p16"), load_pair_folder(tmp_path / "p8")
    for a, b in zip(data16.images, data8.images, strict=True):
        assert float(a.mean()) < 0.5  # not clipped to white
        assert float((a - b).abs().max()) < 0.02  # the same picture up to the 8-bit rounding
    for m16, m8 in zip(data16.masks, data8.masks, strict=True):
        assert torch.equal(m16, m8) and 0.02 < float(m16.mean()) < 0.6  # labels 301.. all foreground
    torch.manual_seed(0)
    model = build_model("unet", depth=2, base_channels=4, out_channels=1)
    train_segmentation(model, data16, TrainConfig(steps=30, batch_size=4, lr=0.01, val_fraction=0.0, patch_size=32))
    scores = [evaluate_dice(model, data, torch.zeros(3), torch.ones(3)) for data in (data16, data8)]
    assert min(scores) > 0.6 and abs(scores[0] - scores[1]) < 0.01


def test_one_image_holds_out_a_tile_and_says_so(standalone_host):
    image, labels = nuclei_like(size=64, seed=3)
    images = torch.from_numpy(image.astype(np.float32) / 65535).expand(1, 64, 64)[..., None].expand(1, 64, 64, 3)
    masks = torch.from_numpy((labels > 0).astype(np.float32))[None]
    _, report = UNetLabTrainSegmentationUNet().train(_new_seg(), steps=2, batch_size=2, filename_prefix="",
                                                     images=images, masks=masks)["result"]
    assert "one image, so the right 16 of 64 px columns of images[0] held out as a tile" in report
    assert "held-out Dice" in report and "on 1 validation image(s)" in report


def test_bad_prefix_or_folder_stops_the_node_before_training(standalone_host, monkeypatch):
    started = []
    monkeypatch.setattr(segmentation_train, "train_segmentation", lambda *a, **k: started.append(1))
    images, masks = torch.rand(2, 32, 32, 3), (torch.rand(2, 32, 32) > 0.5).float()
    for prefix in ("../outside/x", "/abs/x", "a/../../x"):
        message = UNetLabTrainSegmentationUNet.VALIDATE_INPUTS(filename_prefix=prefix)
        assert isinstance(message, str) and "filename_prefix" in message
        with pytest.raises(InputError, match="filename_prefix"):
            UNetLabTrainSegmentationUNet().train(_new_seg(), steps=1, filename_prefix=prefix, images=images,
                                                 masks=masks)
    assert "no folder 'absent'" in UNetLabTrainSegmentationUNet.VALIDATE_INPUTS("ok/name", "absent")
    assert "inside the input folder" in UNetLabTrainSegmentationUNet.VALIDATE_INPUTS("ok/name", "../../etc")
    assert UNetLabTrainSegmentationUNet.VALIDATE_INPUTS("unet_lab/fine", "") is True
    assert isinstance(UNetLabSaveSegmentationUNet.VALIDATE_INPUTS("../x"), str)
    assert "outside the output folder" in standalone_nodes.SaveImage.VALIDATE_INPUTS("../../x")
    assert standalone_nodes.SaveImage.VALIDATE_INPUTS("unet_lab/%year%/mask") is True
    assert started == []


def test_the_executor_refuses_a_bad_prefix_before_any_node_runs(standalone_host, monkeypatch):
    from unet_lab.nodes.host.headless import node_classes
    from unet_lab.unet_core.graph.execute import Executor

    started = []
    monkeypatch.setattr(segmentation_train, "train_segmentation", lambda *a, **k: started.append(1))
    prompt = {
        "1": {"class_type": "UNetLabLoadSegmentationUNet",
              "inputs": {"model_name": "(new) unet", "depth": 2, "base_channels": 4, "classes": 1}},
        "2": {"class_type": "UNetLabSyntheticSegmentationData",
              "inputs": {"count": 2, "size": 32, "seed": 0, "split": "train"}},
        "3": {"class_type": "UNetLabTrainSegmentationUNet",
              "inputs": {"seg_unet": ["1", 0], "steps": 1, "batch_size": 1, "learning_rate": 0.01,
                         "schedule": "cosine", "loss": "ce+dice", "augmentation": "none", "border_weights": False,
                         "validation_fraction": 0.0, "seed": 0, "filename_prefix": "../../escape",
                         "images": ["2", 0], "masks": ["2", 1]}},
        "4": {"class_type": "UNetLabSaveSegmentationUNet",
              "inputs": {"seg_unet": ["3", 0], "filename_prefix": "unet_lab/ok"}},
    }
    check = Executor(node_classes()).validate(prompt)
    assert not check.valid and "filename_prefix" in check.summary()
    assert started == []


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_get_the_umask_mode(standalone_host, umask):
    previous = os.umask(umask)
    try:
        out = UNetLabSaveSegmentationUNet().save(_new_seg(), "unet_lab/modes")
        image = standalone_nodes.SaveImage().save_images(torch.rand(1, 8, 8, 3), "unet_lab/modes")
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    assert stat.S_IMODE(os.stat(out["result"][0]).st_mode) == expected
    entry = image["ui"]["images"][0]
    png = standalone_host.output_directory() / entry["subfolder"] / entry["filename"]
    assert stat.S_IMODE(os.stat(png).st_mode) == expected


def test_the_standalone_temp_folder_is_per_host_and_removed(tmp_path):
    from unet_lab.nodes.host import StandaloneHost

    host = StandaloneHost(models_root=tmp_path, output_dir=tmp_path / "o", input_dir=tmp_path / "i",
                          device="cpu", show_progress=False)
    temp = host.temp_directory()
    assert temp.is_dir() and temp.name.startswith("unet_lab_temp_") and temp == host.temp_directory()
    (temp / "preview.png").write_bytes(b"x")
    other = StandaloneHost(models_root=tmp_path, device="cpu", show_progress=False).temp_directory()
    assert other != temp
    host._temp_cleanup()  # what exit (or dropping the host) runs
    assert not temp.exists()


def test_overlay_outlines_each_object_and_keeps_touching_ones_apart():
    mask = torch.zeros(1, 20, 30)
    mask[0, 4:12, 3:11] = 1
    mask[0, 4:12, 12:20] = 1  # a one-pixel gap at column 11: two objects
    image = torch.full((1, 20, 30, 3), 0.5)
    out = overlay(image, mask, ["foreground"], style="outlines")
    labels, count = connected_components(mask[0].numpy() > 0.5)
    edge = object_outlines(labels)
    assert count == 2
    assert edge[4, 3:11].all() and edge[4:12, 10].all() and edge[4:12, 12].all() and not edge[6:10, 5:9].any()
    red = torch.tensor([1.0, 0.2, 0.2])
    assert torch.allclose(out[0][torch.from_numpy(edge)], red.expand(int(edge.sum()), 3))
    assert torch.equal(out[0, 15, 25], torch.full((3,), 0.5))  # background untouched
    per_object = overlay(image, mask, ["foreground"], style="outlines, a colour per object")
    assert not torch.allclose(per_object[0, 4, 5], per_object[0, 4, 15])  # two colours
    tint = overlay(image, mask, ["foreground"], style="tint")
    assert torch.allclose(tint[0, 8, 6], 0.55 * 0.5 + 0.45 * red)
