"""pytorch-3dunet ``UNet3D`` / ``ResidualUNet3D``: key layout and parity with the library's own code.

``tests/data/pytorch3dunet_reference.safetensors`` was recorded once by running
wolny/pytorch-3dunet at a33e2c7 (``pytorch3dunet/unet3d/{model,buildingblocks,utils,se}.py``
copied outside this repository; ``skimage`` stubbed in ``sys.modules`` since only ``utils``'s
plotting import needs it): ``UNet3D(in_channels=1, out_channels=2, f_maps=[4, 8, 16],
num_levels=3, num_groups=4)`` (prefix ``unet3d.``) and ``ResidualUNet3D`` with
``out_channels=1`` and the same widths (``residual.``), each built after
``torch.manual_seed(0)``; every GroupNorm's weight/bias set to ``1 + 0.2 * randn`` /
``0.1 * randn`` from ``torch.Generator().manual_seed(1)``; eval mode; a
``torch.rand(1, 1, 16, 24, 32)`` input from that generator; stored: ``{prefix}.state.*``,
``{prefix}.input`` and ``{prefix}.logits`` (``model(x, return_logits=True)[1]``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unet_lab.unet_core.errors import SegmentationError
from unet_lab.unet_core.segmentation.adapters.pytorch3dunet import (
    PyTorch3DUNet,
    looks_like_pytorch3dunet,
    pytorch3dunet_hparams,
)

FIXTURE = Path(__file__).resolve().parents[2] / "data" / "pytorch3dunet_reference.safetensors"


def _state(data: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 7:]: v for k, v in data.items() if k.startswith(f"{prefix}.state.")}


def unet3d_table(cin: int, classes: int, f: list[int]) -> dict[str, tuple]:
    """Key -> shape table of pytorch-3dunet's UNet3D (layer order gcr, nearest up-sampling, concat)."""
    table: dict[str, tuple] = {}

    def single(name: str, ci: int, co: int) -> None:
        table[f"{name}.groupnorm.weight"] = (ci,)
        table[f"{name}.groupnorm.bias"] = (ci,)
        table[f"{name}.conv.weight"] = (co, ci, 3, 3, 3)

    prev = cin
    for i, width in enumerate(f):
        mid = max(width // 2, prev)
        single(f"encoders.{i}.basic_module.SingleConv1", prev, mid)
        single(f"encoders.{i}.basic_module.SingleConv2", mid, width)
        prev = width
    rev = f[::-1]
    for i in range(len(f) - 1):
        single(f"decoders.{i}.basic_module.SingleConv1", rev[i] + rev[i + 1], rev[i + 1])
        single(f"decoders.{i}.basic_module.SingleConv2", rev[i + 1], rev[i + 1])
    table["final_conv.weight"] = (classes, f[0], 1, 1, 1)
    table["final_conv.bias"] = (classes,)
    return table


@pytest.mark.parametrize("prefix,variant", [("unet3d", "UNet3D"), ("residual", "ResidualUNet3D")])
def test_forward_matches_library(prefix, variant):
    data = load_file(FIXTURE)
    state = _state(data, prefix)
    assert looks_like_pytorch3dunet(state)
    hp = pytorch3dunet_hparams(state)
    assert hp["variant"] == variant and hp["f_maps"] == [4, 8, 16]
    assert hp["layer_order"] == "gcr"
    # the group count is not in the weights: UNet3D's 12-channel norms rule 8 out (4 is found); the
    # residual model's widths fit the default 8, so its recorded 4 must be given, as a user would
    assert hp["num_groups"] == (4 if variant == "UNet3D" else 8)
    model = PyTorch3DUNet(**{**hp, "num_groups": 4}).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(data[f"{prefix}.input"])
    torch.testing.assert_close(out, data[f"{prefix}.logits"], atol=1e-5, rtol=0)


def test_plantseg_size_key_and_shape_table():
    table = unet3d_table(1, 1, [32, 64, 128, 256])
    with torch.device("meta"):
        hp = pytorch3dunet_hparams({k: torch.empty(v) for k, v in table.items()})
        model = PyTorch3DUNet(**hp)
    assert hp == {"in_channels": 1, "out_channels": 1, "variant": "UNet3D", "f_maps": [32, 64, 128, 256],
                  "layer_order": "gcr", "num_groups": 8}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == table


def test_fixture_keys_equal_table():
    state = _state(load_file(FIXTURE), "unet3d")
    assert {k: tuple(v.shape) for k, v in state.items()} == unet3d_table(1, 2, [4, 8, 16])


def test_refuses_2d_model_and_2d_input():
    table = unet3d_table(1, 1, [4, 8])
    state = {k: torch.zeros(v) for k, v in table.items()}
    state["final_conv.weight"] = torch.zeros(1, 4, 1, 1)
    with pytest.raises(SegmentationError, match="2D final_conv"):
        pytorch3dunet_hparams(state, "model2d.pytorch")
    with pytest.raises(SegmentationError, match="12 channels cannot have 8 groups"):
        PyTorch3DUNet(f_maps=[4, 8])
    model = PyTorch3DUNet(f_maps=[4, 8], num_groups=4)
    with pytest.raises(SegmentationError, match=r"volume batch \[B, 1, D, H, W\]"):
        model(torch.zeros(1, 1, 16, 16))
