"""The pixel diffusion nodes through the stub executor and directly: train, save, load, sample, refuse."""

from __future__ import annotations

import pytest
import torch

from fixtures_checkpoints import write_unet
from pack_support import node_result
from unet_lab.nodes.pixel_diffusion import (
    UNetLabLoadPixelDiffusionUNet,
    UNetLabSamplePixelDiffusion,
    UNetLabSyntheticShapes,
    UNetLabTrainPixelDiffusionUNet,
)
from unet_lab.unet_core.errors import CheckpointError, HostError, InputError, UNetLabError

TINY = "tiny (32-64-64, 1.1 M)"


def test_synthetic_shapes_are_seeded_images():
    a, = UNetLabSyntheticShapes().make(8, 16, 3)
    b, = UNetLabSyntheticShapes().make(8, 16, 3)
    c, = UNetLabSyntheticShapes().make(8, 16, 4)
    assert a.shape == (8, 16, 16, 3) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_train_save_load_sample_through_the_executor(standalone_host):
    from unet_lab.nodes.host.headless import node_classes
    from unet_lab.unet_core.graph.execute import Executor

    prompt = {
        "1": {"class_type": "UNetLabSyntheticShapes", "inputs": {"count": 16, "size": 16, "seed": 0}},
        "2": {"class_type": "UNetLabTrainPixelDiffusionUNet", "inputs": {
            "model_size": TINY, "steps": 3, "batch_size": 4, "learning_rate": 0.001, "ema_decay": 0.9, "seed": 0,
            "size": 16, "filename_prefix": "unet_lab/pixel_test", "images": ["1", 0]}},
        "3": {"class_type": "UNetLabSamplePixelDiffusion", "inputs": {
            "pixel_unet": ["2", 0], "sampler": "dpmpp_2m", "steps": 3, "eta": 0.0, "seed": 5, "batch_size": 2,
            "size": 0, "class_label": -1, "guidance": 1.0, "schedule": "auto", "preview_every": 1}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "unet_lab/pixel"}},
    }
    executor = Executor(node_classes())
    result = executor.run(prompt)
    saved = sorted((standalone_host.save_directory("diffusion_models") / "unet_lab").glob("pixel_test_*"))
    assert [p.name for p in saved] == ["pixel_test_00001_.safetensors"]
    pm, info = node_result(UNetLabLoadPixelDiffusionUNet().load("unet_lab/pixel_test_00001_.safetensors"))
    assert pm.config.image_size == 16 and "config from the file's metadata" in info
    images, = UNetLabSamplePixelDiffusion().sample(pm, "ddim", 3, 0.0, 5, 2)
    assert images.shape == (2, 16, 16, 3) and 0 <= images.min() and images.max() <= 1
    again, = UNetLabSamplePixelDiffusion().sample(pm, "ddim", 3, 0.0, 5, 2)
    assert torch.equal(images, again)   # seeded
    written = sorted(standalone_host.output_directory().rglob("pixel_*.png"))
    assert len(written) == 2 and result.outputs["4"]["images"]  # the sampled batch was saved


def test_train_refuses_a_bad_prefix_before_training(standalone_host):
    shapes, = UNetLabSyntheticShapes().make(4, 16, 0)
    with pytest.raises((InputError, HostError), match="filename_prefix"):
        UNetLabTrainPixelDiffusionUNet().train(TINY, steps=10**6, images=shapes, filename_prefix="../outside")


def test_train_needs_images_or_folder(standalone_host):
    with pytest.raises(InputError, match="connect 'images' or name a 'folder'"):
        UNetLabTrainPixelDiffusionUNet().train(TINY, steps=1, filename_prefix="")


def test_sample_refuses_guidance_without_a_null_class(standalone_host):
    shapes, = UNetLabSyntheticShapes().make(4, 16, 0)
    pm, _ = node_result(UNetLabTrainPixelDiffusionUNet().train(TINY, steps=1, batch_size=2, images=shapes,
                                                               filename_prefix=""))
    with pytest.raises(InputError, match="Sample Pixel Diffusion: .*guidance"):
        UNetLabSamplePixelDiffusion().sample(pm, "ddim", 2, guidance=3.0)
    with pytest.raises(InputError, match="multiple of 4"):
        UNetLabSamplePixelDiffusion().sample(pm, "ddim", 2, size=18)


def test_load_node_refuses_an_sd_unet_naming_it(standalone_host):
    write_unet(standalone_host.save_directory("diffusion_models"), "sd1", "ldm", name="sd15_unet.safetensors")
    with pytest.raises(CheckpointError, match=r"sd15_unet\.safetensors.*not a pixel diffusion U-Net"):
        UNetLabLoadPixelDiffusionUNet().load("sd15_unet.safetensors")


def test_sample_node_refuses_other_inputs():
    with pytest.raises(UNetLabError, match="not a PIXEL_UNET"):
        UNetLabSamplePixelDiffusion().sample("model", "ddim", 2)


def test_shipped_shapes_workflow_runs_headless(standalone_host):
    """The shipped workflow, with training and sampling cut to a few steps, runs end to end headless."""
    import json

    from pack_support import REPO_ROOT
    from unet_lab.nodes.host.headless import node_classes
    from unet_lab.unet_core.graph.execute import Executor

    workflow = json.loads((REPO_ROOT / "workflows" / "unet_lab_train_pixel_diffusion_shapes.json").read_text())
    for node in workflow["nodes"]:
        if node["type"] == "UNetLabSyntheticShapes":
            node["widgets_values"][0:2] = [16, 16]          # count, size
        if node["type"] == "UNetLabTrainPixelDiffusionUNet":
            node["widgets_values"][1:3] = [2, 4]            # steps, batch size
            node["widgets_values"][7] = 16                  # size
        if node["type"] == "UNetLabSamplePixelDiffusion":
            node["widgets_values"][1] = 2                   # steps
    executor = Executor(node_classes())
    prompt, extra = executor.to_prompt(workflow)
    result = executor.run(prompt, extra)
    assert result.validation.valid
    saved = list((standalone_host.save_directory("diffusion_models") / "unet_lab").glob("pixel_shapes_*"))
    assert len(saved) == 1
    assert len(list(standalone_host.output_directory().rglob("pixel_shapes_*.png"))) == 16
