"""3D U-Net: shapes, anisotropic pooling plan, padding, residual variant, and a functional reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unet_lab.unet_core.errors import SegmentationError
from unet_lab.unet_core.segmentation.architectures.unet3d import UNet3D, plan_z_pooling


def reference_forward(model: UNet3D, x: torch.Tensor) -> torch.Tensor:
    """The plain (non-residual, batch-norm eval, transposed) 3D U-Net written in torch.nn.functional."""
    sd = model.state_dict()

    def block(prefix: str, h: torch.Tensor) -> torch.Tensor:
        for conv, bn in ((0, 1), (3, 4)):
            h = F.conv3d(h, sd[f"{prefix}.{conv}.weight"], padding=1)
            h = F.batch_norm(h, sd[f"{prefix}.{bn}.running_mean"], sd[f"{prefix}.{bn}.running_var"],
                             sd[f"{prefix}.{bn}.weight"], sd[f"{prefix}.{bn}.bias"], False, 0.0, 1e-5)
            h = F.relu(h)
        return h

    depth, pool_z = model.config["depth"], model.config["pool_z"]
    skips = [block("encoder.0", x)]
    for lvl in range(1, depth + 1):
        k = (2 if pool_z[lvl - 1] else 1, 2, 2)
        skips.append(block(f"encoder.{lvl}", F.max_pool3d(skips[-1], k)))
    h = skips.pop()
    for lvl in range(depth - 1, -1, -1):
        k = (2 if pool_z[lvl] else 1, 2, 2)
        up = F.conv_transpose3d(h, sd[f"up.{lvl}.weight"], sd[f"up.{lvl}.bias"], stride=k)
        h = block(f"decoder.{lvl}", torch.cat([skips.pop(), up], 1))
    return F.conv3d(h, sd["head.weight"], sd["head.bias"])


def _randomize_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_matches_functional_reference_with_anisotropic_pooling():
    torch.manual_seed(0)
    model = UNet3D.build(depth=3, base_channels=4, pool_z=[False, True, True], out_channels=2).eval()
    _randomize_bn(model)
    x = torch.rand(2, 1, 8, 32, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(model, x), atol=1e-5, rtol=1e-5)
    assert model.size_divisor == (4, 8, 8)
    assert model.up[0].weight.shape[2:] == (1, 2, 2)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("norm,upsampling", [("batch", "transpose"), ("group", "trilinear")])
def test_odd_sizes_batch_equivalence_and_backward(residual, norm, upsampling):
    torch.manual_seed(0)
    model = UNet3D.build(depth=2, base_channels=4, norm=norm, upsampling=upsampling, residual=residual).eval()
    x = torch.rand(2, 1, 5, 19, 22)
    with torch.no_grad():
        out = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(2)])
    assert out.shape == (2, 1, 5, 19, 22)
    torch.testing.assert_close(out, single, atol=1e-5, rtol=1e-5)
    model.train()
    model(x).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_plan_z_pooling():
    assert plan_z_pooling(4, 64) == [True, True, True, True]
    assert plan_z_pooling(4, 16) == [True, True, False, False]  # 16 -> 8 -> 4, then stop at min_z 4
    assert plan_z_pooling(4, 64, z_ratio=5.0) == [False, False, True, True]  # 5 -> 2.5 -> 1.25: pool from there
    assert plan_z_pooling(3, 1) == [False, False, False]


def test_one_slice_volume_runs():
    model = UNet3D.build(depth=2, base_channels=4, pool_z=[False, False]).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 1, 16, 16)).shape == (1, 1, 1, 16, 16)


def test_bad_inputs_and_hparams():
    model = UNet3D.build(depth=1, base_channels=2)
    with pytest.raises(SegmentationError, match="2D image batch"):
        model(torch.rand(1, 1, 16, 16))
    with pytest.raises(SegmentationError, match="upsampling"):
        UNet3D.build(upsampling="bilinear")
    with pytest.raises(SegmentationError, match="pool_z"):
        UNet3D.build(depth=2, pool_z=[True])


def test_fast_path_folds_batch_norm_3d_and_agrees():
    from unet_lab.unet_core.segmentation.speed.fast import prepare_inference

    torch.manual_seed(0)
    model = UNet3D.build(depth=2, base_channels=4, residual=True).eval()
    _randomize_bn(model)
    fast = prepare_inference(model, "cpu", "fast")
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in fast.module.modules())
    x = torch.rand(1, 1, 8, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-5)
