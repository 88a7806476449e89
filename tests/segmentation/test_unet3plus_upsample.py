"""U-Net 3+ up-sampling in batch chunks gives the one-call result (the chunks exist because CUDA's
channels-last bilinear kernel refuses outputs over 2^31 - 1 elements)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unet_lab.unet_core.segmentation.architectures import unet3plus


def test_chunked_upsample_equals_one_call(monkeypatch):
    x = torch.randn(5, 3, 4, 6).contiguous(memory_format=torch.channels_last)
    expected = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    per_image = 3 * 4 * 6 * 16
    monkeypatch.setattr(unet3plus, "_MAX_UPSAMPLE_ELEMENTS", 2 * per_image)  # two images a chunk: 3 chunks
    chunked = unet3plus.upsample(x, 4)
    assert chunked.shape == expected.shape
    assert torch.equal(chunked, expected)
