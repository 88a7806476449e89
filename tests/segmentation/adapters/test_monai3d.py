"""MONAI BasicUNet / UNet (spatial_dims=3) state dicts in our modules, against MONAI itself (skipped without it)."""

from __future__ import annotations

import pytest
import torch

from unet_lab.unet_core.errors import SegmentationError
from unet_lab.unet_core.segmentation.adapters.monai3d import MonaiBasicUNet, MonaiUNet, monai_hparams, sniff_monai

monai_nets = pytest.importorskip("monai.networks.nets")


def _perturb_norms(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.affine:
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
        if isinstance(m, torch.nn.PReLU):
            m.weight.data.fill_(0.1 + 0.3 * float(torch.rand(1, generator=g)))


def _check(reference: torch.nn.Module, kind: str, cls: type, shape: tuple[int, ...], **overrides) -> None:
    _perturb_norms(reference)
    reference.eval()
    state = reference.state_dict()
    assert sniff_monai(state) == kind
    hp = {**monai_hparams(state, kind, "ref.pt"), **overrides}
    ours = cls(**hp).eval()
    ours.load_state_dict(state, strict=True)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_basic_unet_matches_monai(norm):
    torch.manual_seed(0)
    ref = monai_nets.BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=(4, 4, 8, 16, 32, 4), norm=norm)
    _check(ref, "monai_basic_unet", MonaiBasicUNet, (2, 1, 16, 32, 16))


def test_basic_unet_odd_size_replicate_pad_matches_monai():
    torch.manual_seed(1)
    ref = monai_nets.BasicUNet(spatial_dims=3, in_channels=2, out_channels=1, features=(4, 4, 8, 8, 16, 4))
    ref.eval()
    ours = MonaiBasicUNet(**monai_hparams(ref.state_dict(), "monai_basic_unet")).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.rand(1, 2, 16, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("res_units,norm", [(2, "instance"), (0, "instance"), (1, "batch")])
def test_unet_matches_monai(res_units, norm):
    torch.manual_seed(0)
    ref = monai_nets.UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16, 16),
                          strides=(2, 2, 2), num_res_units=res_units, norm=norm)
    _check(ref, "monai_unet", MonaiUNet, (1, 1, 16, 24, 32))


def test_2d_monai_state_dict_is_named_as_2d():
    ref = monai_nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 16, 32, 4))
    with pytest.raises(SegmentationError, match="spatial_dims=2"):
        monai_hparams(ref.state_dict(), "monai_basic_unet", "model2d.pt")
