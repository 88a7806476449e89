"""The training step's options per device and speed, and its arithmetic against a plain AdamW loop."""

from __future__ import annotations

import pytest
import torch

from unet_lab.unet_core.errors import InputError
from unet_lab.unet_core.segmentation.registry import build_model
from unet_lab.unet_core.segmentation.training.losses import segmentation_loss
from unet_lab.unet_core.segmentation.training.train_step import TrainStep, step_options


def test_options_per_device_and_speed():
    cpu = step_options("cpu", "auto")
    assert cpu.autocast_dtype is None and not cpu.channels_last and not cpu.fused_optimizer and not cpu.compiled
    assert step_options("cpu", "compiled").compiled
    assert "float32" in step_options("cpu", "exact").describe()
    with pytest.raises(InputError, match="training speed 'turbo'"):
        step_options("cpu", "turbo")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fast_uses_bf16_channels_last_and_fused_adamw():
    fast = step_options("cuda", "auto")
    assert fast.autocast_dtype == torch.bfloat16 and fast.channels_last and fast.fused_optimizer
    assert not step_options("cuda", "exact").channels_last


def test_exact_step_equals_a_plain_adamw_loop():
    torch.manual_seed(0)
    model = build_model("unet", depth=2, base_channels=4, out_channels=1)
    reference = build_model("unet", depth=2, base_channels=4, out_channels=1)
    reference.load_state_dict(model.state_dict())
    step = TrainStep(model, step_options("cpu", "exact"), lr=1e-2, weight_decay=1e-4)
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        images = torch.rand(2, 3, 16, 16, generator=generator)
        target = (torch.rand(2, 16, 16, generator=generator) > 0.5).float()
        weights = torch.rand(2, 16, 16, generator=generator) + 0.5
        ours = step(images, target, weights)
        loss = segmentation_loss(reference(images), target, "ce+dice", weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert ours == float(loss.detach())
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)
