"""3D sliding window: the gaussian window, the window plan, slab streaming, and agreement with one pass."""

from __future__ import annotations

import pytest
import torch

from unet_lab.unet_core.errors import SegmentationError
from unet_lab.unet_core.segmentation.architectures.unet3d import UNet3D
from unet_lab.unet_core.segmentation.inference.sliding_window3d import (
    gaussian_window_3d,
    plan_windows,
    run_sliding_window,
)
from unet_lab.unet_core.segmentation.inference.volume import segment_volume
from unet_lab.unet_core.segmentation.meta import SegmentationMeta
from unet_lab.unet_core.segmentation.registry import build_model


def test_gaussian_window_is_the_product_of_axis_gaussians():
    w = gaussian_window_3d((5, 8, 9))
    assert w.shape == (5, 8, 9) and float(w.max()) == pytest.approx(1.0) and float(w.min()) > 0
    z = torch.arange(5.0) - 2.0
    y = torch.arange(8.0) - 3.5
    x = torch.arange(9.0) - 4.0
    ref = (torch.exp(-z[:, None, None] ** 2 / (2 * (5 * 0.125) ** 2)) * torch.exp(-y[None, :, None] ** 2 / (2 * 1.0 ** 2))
           * torch.exp(-x[None, None, :] ** 2 / (2 * (9 * 0.125) ** 2)))
    torch.testing.assert_close(w, (ref / ref.max()).float())


def test_plan_covers_every_voxel_and_clips():
    plan = plan_windows((10, 40, 33), (16, 16, 16), 0.5)
    assert plan.patch == (10, 16, 16)
    assert plan.starts[0] == [0] and plan.starts[1][-1] == 24 and plan.starts[2][-1] == 17


def test_slabs_stream_in_order_and_blend_to_the_identity():
    """A predictor returning its input: the blended result is the input exactly, slab by slab."""
    volume = torch.rand(1, 23, 20, 18)
    reads: list[tuple[int, int]] = []

    def read(z0: int, z1: int) -> torch.Tensor:
        reads.append((z0, z1))
        return volume[:, z0:z1]

    out = torch.full((1, 23, 20, 18), -1.0)
    sinks: list[int] = []

    def sink(z0: int, probs: torch.Tensor) -> None:
        sinks.append(z0)
        out[:, z0:z0 + probs.shape[1]] = probs

    plan = plan_windows((23, 20, 18), (8, 12, 12), 0.25)
    run_sliding_window(lambda b: b, read, plan, 1, sink, batch=3)
    torch.testing.assert_close(out, volume)
    assert sinks == sorted(sinks) and len(sinks) == len(plan.starts[0])
    assert all(z1 - z0 == 8 for z0, z1 in reads)  # never more than one slab of input at a time


def test_out_of_memory_halves_the_window_batch():
    calls: list[int] = []

    def predict(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.shape[0])
        if batch.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return batch

    plan = plan_windows((8, 32, 32), (8, 16, 16), 0.0)
    used = run_sliding_window(predict, lambda a, b: torch.rand(1, b - a, 32, 32), plan, 1, lambda z, p: None, batch=4)
    assert used == 2 and calls[0] == 4


def _trained_like_model() -> UNet3D:
    """A 3D U-Net whose output follows the input smoothly (weights fixed by seed; BN in eval)."""
    torch.manual_seed(0)
    return UNet3D.build(depth=2, base_channels=4, norm="group").eval()


def test_one_slice_volume_works_and_2d_model_is_refused():
    model = _trained_like_model()
    meta = SegmentationMeta.for_model(build_model("unet", in_channels=1, depth=1, base_channels=2))
    images = torch.rand(1, 24, 20, 3)
    result = segment_volume(model, meta, images, patch=(8, 16, 16))
    assert result.masks.shape == (1, 24, 20) and result.overlay.shape == (1, 24, 20, 3)
    with pytest.raises(SegmentationError, match="2D unet but the input is a volume"):
        segment_volume(build_model("unet", depth=1, base_channels=2), meta, images)
