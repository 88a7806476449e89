"""Load Image (scientific) and Load Mask / Labels as nodes: input folder, validation, reports, a graph run."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from fixtures_imaging import nuclei_like, save_stack
from unet_lab.nodes.imaging import UNetLabLoadImageScientific, UNetLabLoadMaskLabels


def _inputs(host):
    folder = host.input_directory()
    folder.mkdir(parents=True, exist_ok=True)
    image, labels = nuclei_like()
    Image.fromarray(image).save(folder / "nuclei16.png")
    Image.fromarray(labels).save(folder / "labels16.tif")
    save_stack(folder / "zstack.tif", [nuclei_like(seed=s)[0] for s in range(3)])
    return image, labels


def test_nodes_list_load_and_report_the_bit_depth(standalone_host):
    image, labels = _inputs(standalone_host)
    choices = UNetLabLoadImageScientific.INPUT_TYPES()["required"]["image"][0]
    assert choices == ["labels16.tif", "nuclei16.png", "zstack.tif"]
    loaded, report = UNetLabLoadImageScientific().load("nuclei16.png", "all", "min-max")
    expected = (image - image.min()) / (image.max() - image.min())
    np.testing.assert_allclose(loaded[0, :, :, 0].numpy(), expected, atol=1e-6)
    assert "16-bit" in report and "nuclei16.png" in report and "min-max" in report
    stack, report = UNetLabLoadImageScientific().load("zstack.tif", "0", "percentile", 1.0, 99.8)
    assert stack.shape == (3, 48, 48, 3) and "3 page(s)" in report
    mask, report = UNetLabLoadMaskLabels().load("labels16.tif")
    assert torch.equal(mask[0], torch.from_numpy((labels > 0).astype(np.float32)))
    assert "6 distinct non-zero label(s)" in report
    one, _ = UNetLabLoadMaskLabels().load("labels16.tif", "one class id", 303)
    assert torch.equal(one[0], torch.from_numpy((labels == 303).astype(np.float32)))


def test_validate_inputs_refuses_missing_and_escaping_names(standalone_host):
    _inputs(standalone_host)
    assert UNetLabLoadImageScientific.VALIDATE_INPUTS("nuclei16.png") is True
    assert "no file 'gone.png'" in UNetLabLoadImageScientific.VALIDATE_INPUTS("gone.png")
    assert "outside" in UNetLabLoadMaskLabels.VALIDATE_INPUTS("../secret.png")
    assert "absolute" in UNetLabLoadMaskLabels.VALIDATE_INPUTS("/etc/passwd")
    assert "low_percentile" in UNetLabLoadImageScientific.VALIDATE_INPUTS("nuclei16.png", 99.0, 1.0)


def test_is_changed_follows_the_file_content(standalone_host):
    _inputs(standalone_host)
    before = UNetLabLoadMaskLabels.IS_CHANGED("labels16.tif")
    assert before == UNetLabLoadMaskLabels.IS_CHANGED("labels16.tif")
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(standalone_host.input_directory() / "labels16.tif")
    assert UNetLabLoadMaskLabels.IS_CHANGED("labels16.tif") != before


def test_the_obvious_wiring_runs_in_the_stub_executor(standalone_host):
    from unet_lab.nodes.host.headless import node_classes
    from unet_lab.unet_core.graph.execute import Executor

    _inputs(standalone_host)
    prompt = {
        "1": {"class_type": "UNetLabLoadImageScientific",
              "inputs": {"image": "nuclei16.png", "channel": "all", "normalization": "percentile",
                         "low_percentile": 1.0, "high_percentile": 99.8}},
        "2": {"class_type": "UNetLabLoadMaskLabels",
              "inputs": {"mask": "labels16.tif", "foreground": "label > 0", "class_id": 1}},
        "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    result = Executor(node_classes()).run(prompt, source="test")
    assert set(result.executed) == {"1", "2", "3", "4", "5"}
    assert len(result.outputs["4"]["images"]) == 1
