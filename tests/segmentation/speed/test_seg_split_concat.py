"""Decoder steps without their concatenation (``segmentation.split_concat``) against the models as built.

The reference is the unfolded model itself in float64 (the rewrite is exact math, so only
rounding separates them), and, for the folded transposed-convolution bias, ``F.conv2d`` of the
biased map directly, on map sizes down to a single pixel.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fixtures_segmodels import randomize_batchnorm_stats
from unet_lab.unet_core.segmentation.registry import build_model
from unet_lab.unet_core.segmentation.speed import bn_folding, conv_relu, fast, split_concat

SPLIT_CASES = {
    "unet": ("unet", dict(base_channels=4, depth=3, out_channels=2)),
    "unet_bilinear": ("unet", dict(base_channels=4, depth=3, out_channels=1, upsampling="bilinear")),
    "attention_unet": ("attention_unet", dict(base_channels=4, depth=3, out_channels=3)),
    "attention_unet_bilinear": ("attention_unet", dict(base_channels=4, depth=2, out_channels=1,
                                                       upsampling="bilinear")),
}


def _model(arch: str, hp: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, **hp)
    randomize_batchnorm_stats(model, seed)
    for m in model.modules():  # transposed-conv biases well away from 0, so folding them matters
        if isinstance(m, nn.ConvTranspose2d):
            nn.init.uniform_(m.bias, 0.5, 1.5)
    return model.double().eval()


def _steps(model: nn.Module) -> int:
    return sum(isinstance(m, split_concat.SplitConcatUp) for m in model.modules())


@pytest.mark.parametrize("case", list(SPLIT_CASES))
@pytest.mark.parametrize("size", [(32, 32), (21, 30), (8, 8)])
def test_split_steps_give_the_model_output(case, size):
    arch, hp = SPLIT_CASES[case]
    model = _model(arch, hp)
    folded = bn_folding.fold_batch_norms(model)
    assert split_concat.split_decoder_concats(folded) == hp["depth"]  # every decoder step
    assert _steps(folded) == hp["depth"]
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-9, atol=1e-10)


def test_split_steps_through_the_cudnn_branch(monkeypatch):
    """The merge's fused kernel, with the cuDNN op replaced by its definition, and the rest fused too."""
    model = _model("unet", SPLIT_CASES["unet"][1])
    folded = bn_folding.fold_batch_norms(model)
    split_concat.split_decoder_concats(folded, fused_kernels=True)
    conv_relu.fuse_conv_relu(folded)

    def conv_add_relu(x, weight, z, alpha, bias, stride, padding, dilation, groups):
        return (F.conv2d(x, weight, bias, stride, padding, dilation, groups) + alpha * z).clamp_min(0)

    monkeypatch.setattr(torch, "cudnn_convolution_add_relu", conv_add_relu, raising=False)
    monkeypatch.setattr(torch, "cudnn_convolution_relu",
                        lambda x, w, b, *a: F.conv2d(x, w, b, *a).clamp_min(0), raising=False)
    monkeypatch.setattr(conv_relu.ConvReLU, "fusable", lambda self, x: self.fused)
    monkeypatch.setattr(conv_relu.ConvReLU, "_pick", lambda self, x, z: True)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-9, atol=1e-10)
    merges = [m.merge for m in folded.modules() if isinstance(m, split_concat.SplitConcatUp)]
    assert merges and all(list(m.choice.values()) == [True] for m in merges)  # the add + ReLU kernel ran
    assert all(k[-1] is not None for m in merges for k in m.choice)  # with the skip's conv as its addend


@pytest.mark.parametrize("size", [(1, 1), (1, 6), (5, 1), (2, 2), (5, 7)])
def test_border_taps_are_the_bias_terms_the_padding_drops(size):
    """conv(u0 + c) = conv(u0) + sum(taps) + border terms, checked against F.conv2d of the biased map."""
    torch.manual_seed(1)
    weight = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    c = torch.randn(4, dtype=torch.float64)
    u0 = torch.randn(2, 4, *size, dtype=torch.float64)
    want = F.conv2d(u0 + c.view(1, -1, 1, 1), weight, None, 1, 1)
    taps = torch.einsum("okij,k->oij", weight, c)
    got = F.conv2d(u0, weight, taps.sum((1, 2)), 1, 1)
    split_concat.BorderTaps(taps).add_to(got)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_size_mismatch_runs_the_padded_original_math():
    """A step given an upsampled map smaller than its skip (a caller that bypassed the input
    padding) pads it as the original step does, bias excluded from the pad."""
    model = _model("unet", SPLIT_CASES["unet"][1])
    step = bn_folding.fold_batch_norms(model).up3  # the last step: 8 -> 4 channels
    original = step.conv, step.up
    split = split_concat.SplitConcatUp(*split_concat._parts(step), fused_kernels=False)
    deep = torch.randn(1, 8, 5, 6, dtype=torch.float64)
    skip = torch.randn(1, 4, 11, 13, dtype=torch.float64)  # upsampled: 10 x 12
    with torch.no_grad():
        want = original[0](torch.cat([skip, F.pad(original[1](deep), [0, 1, 0, 1])], dim=1))
        torch.testing.assert_close(split(deep, skip), want, rtol=1e-9, atol=1e-10)


def test_steps_that_are_not_plain_stay():
    model = _model("residual_unet", dict(base_channels=4, depth=2, out_channels=1))
    folded = bn_folding.fold_batch_norms(model)
    assert split_concat.split_decoder_concats(folded) == 0  # residual blocks: the shortcut reads the concatenation
    unet = bn_folding.fold_batch_norms(_model("unet", SPLIT_CASES["unet"][1]))
    unet.up1.register_forward_hook(lambda *a: None)
    assert split_concat.split_decoder_concats(unet) == 2  # the hooked step is left as it is
    assert type(unet.up1).__name__ == "Up"


def test_fast_path_uses_the_split_steps_on_cpu():
    model = _model("unet", SPLIT_CASES["unet"][1]).float()
    forward = fast.prepare_inference(model, "cpu", "fast")
    assert forward.split_steps == 3 and _steps(forward.module) == 3
    assert _steps(model) == 0  # the source model is not touched
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(forward(x), model(x), rtol=1e-4, atol=1e-4)
    fast.clear_inference_cache(model)
