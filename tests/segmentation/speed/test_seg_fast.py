"""The fast segmentation inference path: BatchNorm folding, fast/compiled forwards, their cache.

Folding is checked against the unfolded model in float64 (the math of eval BatchNorm is exact
under folding, so only rounding separates them), plus the fold formula itself written out here
for grouped and transposed convolutions. The compiled path is checked for its fallback (a
``torch.compile`` that raises), not for speed: speed lives in benchmarks/bench_segmentation.py.
"""

from __future__ import annotations

import gc
import logging

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fixtures_segmodels import make_state_dict, randomize_batchnorm_stats, smp_unet_resnet34_shapes
from unet_lab.unet_core.errors import InputError, SegmentationError
from unet_lab.unet_core.segmentation.checkpoint import load_segmentation
from unet_lab.unet_core.segmentation.inference.predictor import make_predictor
from unet_lab.unet_core.segmentation.registry import ALL_ARCHITECTURES, build_model
from unet_lab.unet_core.segmentation.speed import bn_folding, conv_relu, fast

# BatchNorm everywhere (the default norm), small widths; variants add the other code paths.
CASES: dict[str, tuple[str, dict]] = {
    "unet": ("unet", dict(base_channels=4, depth=3, out_channels=2)),
    "unet_bilinear": ("unet", dict(base_channels=4, depth=3, out_channels=1, upsampling="bilinear")),
    "unet_plus_plus": ("unet_plus_plus", dict(base_channels=4, depth=3, out_channels=2)),
    "unet_plus_plus_deep_bilinear": ("unet_plus_plus", dict(base_channels=4, depth=2, out_channels=1,
                                                            deep_supervision=True, upsampling="bilinear")),
    "attention_unet": ("attention_unet", dict(base_channels=4, depth=3, out_channels=3)),
    "residual_unet": ("residual_unet", dict(base_channels=4, depth=3, out_channels=2)),
    "unet3plus": ("unet3plus", dict(base_channels=4, depth=3, out_channels=2)),
    "smp_unet": ("smp_unet", dict(encoder_name="resnet18", decoder_channels=[16, 8, 8, 8, 4], out_channels=2)),
    "smp_unet_r50": ("smp_unet", dict(encoder_name="resnet50", encoder_depth=3, decoder_channels=[16, 8, 4],
                                      out_channels=1)),
    "smp_unet_plus_plus": ("smp_unet_plus_plus", dict(encoder_name="resnet18", encoder_depth=3,
                                                      decoder_channels=[16, 8, 8], out_channels=1)),
}


def _bn_model(arch: str, hp: dict, dtype=torch.float64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, **hp)
    randomize_batchnorm_stats(model, seed)
    return model.to(dtype).eval()


def _count(model: nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


def _bn_after_conv(model: nn.Module) -> tuple[int, int]:
    """(BatchNorm2d calls whose input is a convolution's output, BatchNorm2d calls), seen by hooks in a forward."""
    produced: dict[int, bool] = {}
    hits = [0, 0]
    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            handles.append(m.register_forward_hook(lambda mod, inp, out: produced.__setitem__(id(out), True)))
        if isinstance(m, nn.BatchNorm2d):
            handles.append(m.register_forward_pre_hook(
                lambda mod, inp: hits.__setitem__(slice(None), [hits[0] + int(id(inp[0]) in produced),
                                                                hits[1] + 1])))
    try:
        with torch.no_grad():
            model(torch.randn(1, model.in_channels, 32, 32, dtype=next(model.parameters()).dtype))
    finally:
        for h in handles:
            h.remove()
    return hits[0], hits[1]


def test_every_registry_architecture_has_a_case():
    assert {arch for arch, _ in CASES.values()} == set(ALL_ARCHITECTURES)


@pytest.mark.parametrize("case", list(CASES))
def test_fold_matches_unfolded_in_float64_and_leaves_the_source_alone(case):
    arch, hp = CASES[case]
    model = _bn_model(arch, hp)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    after_conv, called = _bn_after_conv(model)
    assert after_conv == called > 0  # in these architectures every BatchNorm that runs follows a conv

    folded = bn_folding.fold_batch_norms(model)

    # no BatchNorm left where a conv feeds it (smp encoders with depth < 5 keep unused layers: folded too)
    assert _bn_after_conv(folded) == (0, 0)
    assert _count(folded, nn.BatchNorm2d) == 0
    assert all(isinstance(folded.get_submodule(name), nn.Identity) for name in norms)
    assert _count(folded, nn.Conv2d) == _count(model, nn.Conv2d)
    # the source is untouched: same tensors, same BatchNorm modules, still in eval mode with grads on
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)} == norms
    assert all(p.requires_grad for p in model.parameters())
    x = torch.randn(2, model.in_channels, 37, 45, dtype=torch.float64)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-9 * float(expected.abs().max())


def test_fold_keeps_a_training_model_training():
    model = build_model("residual_unet", base_channels=4, depth=2).train()
    folded = bn_folding.fold_batch_norms(model)
    assert model.training and all(m.training for m in model.modules())
    assert not folded.training and _count(folded, nn.BatchNorm2d) == 0


def _bn_reference(z: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval BatchNorm written out: gamma * (z - mean) / sqrt(var + eps) + beta."""
    shape = (1, -1, 1, 1)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    return ((z - bn.running_mean.reshape(shape)) / torch.sqrt(bn.running_var.reshape(shape) + bn.eps)
            * gamma.reshape(shape) + beta.reshape(shape))


@pytest.mark.parametrize("conv", [
    lambda: nn.ConvTranspose2d(6, 8, 2, stride=2, groups=2),
    lambda: nn.ConvTranspose2d(4, 6, 3, padding=1, bias=False),
    lambda: nn.Conv2d(6, 8, 3, padding=1, groups=2, bias=False),
    lambda: nn.Conv2d(4, 6, 1, stride=2),
], ids=["transpose_grouped", "transpose_nobias", "conv_grouped", "conv_bias"])
@pytest.mark.parametrize("affine", [True, False])
def test_fold_formula_for_each_conv_kind(conv, affine):
    torch.manual_seed(1)
    c = conv().double()
    bn = nn.BatchNorm2d(c.out_channels, affine=affine, eps=1e-3).double()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c.out_channels))
        bn.running_var.copy_(torch.rand(c.out_channels) + 0.1)
        if affine:
            bn.weight.copy_(torch.randn(c.out_channels))
            bn.bias.copy_(torch.randn(c.out_channels))
    seq = nn.Sequential(c, bn).eval()
    x = torch.randn(2, c.in_channels, 9, 7, dtype=torch.float64)
    folded = bn_folding.fold_batch_norms(seq)
    assert isinstance(folded[1], nn.Identity) and folded[0].bias is not None
    with torch.no_grad():
        expected = _bn_reference(c(x), bn)
        got = folded(x)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)


class _Unknown(nn.Module):
    """conv1/bn1 names, but not a registered block: its forward may use them in any way."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        return self.bn1(h) + h  # conv output used twice: folding would be wrong


def test_pairs_that_are_not_structural_or_are_hooked_stay():
    torch.manual_seed(2)
    model = nn.Sequential(_Unknown(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    randomize_batchnorm_stats(model, 3)
    model.eval()
    model[4].register_forward_hook(lambda m, i, o: None)
    folded = bn_folding.fold_batch_norms(model)
    assert isinstance(folded[0].bn1, nn.BatchNorm2d)  # unknown class: left alone
    assert isinstance(folded[2], nn.Identity)  # plain Sequential pair: folded
    assert isinstance(folded[4], nn.BatchNorm2d)  # a hook on it: left alone
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_smp_resnet34_checkpoint_with_real_key_layout_folds(tmp_path):
    shapes = smp_unet_resnet34_shapes(3, 2, decoder_channels=(16, 16, 8, 8, 4))
    path = tmp_path / "smp_unet.safetensors"
    save_file(make_state_dict(shapes, seed=7), str(path))
    model, _ = load_segmentation(path)
    model = model.double().eval()
    norms = sum(1 for k in shapes if k.endswith("running_var"))  # every BN of the real layout
    assert _count(model, nn.BatchNorm2d) == norms == 36 + 10
    folded = bn_folding.fold_batch_norms(model)
    assert _count(folded, nn.BatchNorm2d) == 0 and _count(model, nn.BatchNorm2d) == norms
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert float((got - expected).abs().max()) <= 1e-9 * float(expected.abs().max())


# ---------------------------------------------------------------- prepared forwards

@pytest.fixture(autouse=True)
def _empty_cache():
    fast.clear_inference_cache()
    yield
    fast.clear_inference_cache()


def _fp32_model(arch: str = "attention_unet", **hp) -> nn.Module:
    return _bn_model(arch, {**CASES[arch][1], **hp}, dtype=torch.float32)


def test_fast_cpu_path_equals_exact_within_fp32_tolerance():
    model = _fp32_model()
    forward = fast.prepare_inference(model, "cpu", "fast")
    assert forward.speed == "fast" and forward.autocast is None and forward.dtype == torch.float32
    assert forward.module is not model and _count(forward.module, nn.BatchNorm2d) == 0
    x = torch.rand(2, 3, 40, 24)
    with torch.no_grad():
        expected = model(x)
    got = forward(x)
    assert got.dtype == torch.float32
    assert float((got - expected).abs().max()) <= 10 * fast.FP32_FOLD_RTOL * float(expected.abs().max())
    # through the tiled predictor: class probabilities agree too
    p_exact = make_predictor(model, torch.device("cpu"), 3, tta_flips=True)(x)
    p_fast = make_predictor(model, torch.device("cpu"), 3, tta_flips=True, speed="fast")(x)
    assert torch.allclose(p_fast, p_exact, atol=1e-5)
    assert torch.allclose(p_fast.sum(1), torch.ones(2, 40, 24), atol=1e-5)


def test_low_precision_path_stays_within_the_stated_tolerance(monkeypatch):
    # the CUDA recipe (bf16 weights, channels_last, bf16 autocast), run on CPU where bf16 autocast exists
    monkeypatch.setattr(fast, "low_precision_dtype", lambda device: torch.bfloat16)
    model = _fp32_model("unet")
    forward = fast.prepare_inference(model, "cpu", "fast")
    assert forward.dtype == torch.bfloat16 and forward.autocast == torch.bfloat16 and forward.channels_last
    assert all(p.dtype == torch.bfloat16 for p in forward.module.parameters())
    assert next(model.parameters()).dtype == torch.float32  # the source keeps its dtype
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        exact = torch.softmax(model(x), 1)
    probs = torch.softmax(forward(x), 1)
    assert float((probs - exact).abs().max()) <= fast.BF16_PROB_TOLERANCE
    # masks agree except where the exact probability is within the tolerance of 0.5
    clear = (exact[:, 1] - 0.5).abs() > fast.BF16_PROB_TOLERANCE
    assert torch.equal((probs[:, 1] >= 0.5)[clear], (exact[:, 1] >= 0.5)[clear])


def test_compiled_falls_back_to_fast_when_compile_raises(monkeypatch, caplog):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = _fp32_model()
    with caplog.at_level(logging.WARNING):
        forward = fast.prepare_inference(model, "cpu", "compiled")
    assert forward.requested == "compiled" and forward.speed == "fast"
    assert any("torch.compile failed" in r.getMessage() and "no C++ compiler" in r.getMessage()
               for r in caplog.records)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(forward(x), model(x), rtol=1e-4, atol=1e-5)


def test_compiled_falls_back_when_the_first_call_fails_and_reraises_oom(monkeypatch, caplog):
    calls = []

    def lazy_compile(module, mode=None):
        def compiled(x):
            calls.append(x.shape)
            raise RuntimeError("backend compiler failed: triton not found")
        return compiled

    monkeypatch.setattr(torch, "compile", lazy_compile)
    model = _fp32_model()
    forward = fast.prepare_inference(model, "cpu", "compiled")
    assert forward.speed == "compiled"
    x = torch.rand(2, 3, 16, 16)
    with caplog.at_level(logging.WARNING):
        got = forward(x)
    assert calls and forward.speed == "fast" and "triton not found" in caplog.text
    with torch.no_grad():
        assert torch.allclose(got, model(x), rtol=1e-4, atol=1e-5)

    def oom_compile(module, mode=None):
        def compiled(x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return compiled

    monkeypatch.setattr(torch, "compile", oom_compile)
    fast.clear_inference_cache()
    forward = fast.prepare_inference(model, "cpu", "compiled")
    with pytest.raises(torch.OutOfMemoryError):
        forward(x)
    assert forward.speed == "compiled"  # an OOM is the caller's to handle (smaller tiles), not a compile failure


def test_compiled_passes_the_mode_and_runs_the_folded_copy(monkeypatch):
    seen, compiled_modules = [], []

    def recording_compile(module, mode=None):
        compiled_modules.append((module, mode))

        def compiled(x):
            seen.append(tuple(x.shape))
            return module(x)
        return compiled

    monkeypatch.setattr(torch, "compile", recording_compile)
    model = _fp32_model("unet")
    forward = fast.prepare_inference(model, "cpu", "compiled", compile_mode="max-autotune-no-cudagraphs")
    assert [(m is forward.module, mode) for m, mode in compiled_modules] == [(True, "max-autotune-no-cudagraphs")]
    assert _count(forward.module, nn.BatchNorm2d) == 0
    x = torch.rand(3, 3, 16, 16)
    forward(x)
    got = forward(x[:2])
    assert seen == [(3, 3, 16, 16), (2, 3, 16, 16)] and forward.speed == "compiled"
    with torch.no_grad():
        assert torch.allclose(got, model(x[:2]), rtol=1e-4, atol=1e-5)
    fast.prepare_inference(model, "cpu", "compiled")  # the default mode: torch.compile's own default
    assert compiled_modules[-1][1] is None


def test_cache_reuses_the_prepared_copy_until_the_weights_change():
    model = _fp32_model("unet")
    first = fast.prepare_inference(model, "cpu", "fast")
    assert fast.prepare_inference(model, "cpu", "fast") is first
    assert fast.prepare_inference(model, torch.device("cpu"), "fast").module is first.module
    exact = fast.prepare_inference(model, "cpu", "exact")
    assert exact.module is model  # exact: the model itself, nothing prepared
    # the nodes move the model to the device and back around every run: that keeps the entry
    model.to(torch.float64).to(torch.float32)  # the same _apply path as a device move
    assert fast.prepare_inference(model, "cpu", "fast") is first

    # one optimizer step (in training mode) changes the weights: a new copy, and it follows them
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.rand(2, 3, 16, 16)).square().mean().backward()
    opt.step()
    model.eval()
    second = fast.prepare_inference(model, "cpu", "fast")
    assert second is not first and second.module is not first.module
    assert fast.prepare_inference(model, "cpu", "fast") is second
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(second(x), model(x), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(first(x), model(x), rtol=1e-4, atol=1e-5)

    # load_state_dict writes in place: also a new copy
    model.load_state_dict(_fp32_model("unet").state_dict() | {"outc.conv.bias": torch.tensor([5.0, -5.0])})
    assert fast.prepare_inference(model, "cpu", "fast") is not second


def test_cache_sees_inference_mode_weights_change_and_dies_with_the_model():
    with torch.inference_mode():
        model = _fp32_model("unet")
    assert next(model.parameters()).is_inference()
    first = fast.prepare_inference(model, "cpu", "fast")
    assert fast.prepare_inference(model, "cpu", "fast") is first
    with torch.inference_mode():
        model.to(torch.float64).to(torch.float32)  # new tensors, same values: still the same entry
    assert fast.prepare_inference(model, "cpu", "fast") is first
    with torch.inference_mode():
        model.outc.conv.bias.add_(1e-4)  # no version counter on inference tensors: the checksum sees it
    assert fast.prepare_inference(model, "cpu", "fast") is not first
    assert len(fast._CACHE) == 1
    del model, first
    gc.collect()
    assert len(fast._CACHE) == 0  # the prepared copy does not keep its source alive


def test_bad_speed_and_compile_mode_are_refused():
    model = _fp32_model("unet")
    with pytest.raises(SegmentationError, match="speed 'turbo'"):
        fast.prepare_inference(model, "cpu", "turbo")
    with pytest.raises(SegmentationError, match="compile mode"):
        fast.prepare_inference(model, "cpu", "compiled", compile_mode="fastest")
    with pytest.raises(InputError, match="speed 'turbo'"):
        make_predictor(model, torch.device("cpu"), 2, False, speed="turbo")


# ---------------------------------------------------------------- conv + bias + ReLU fusion

def _cudnn_conv_relu_reference(x, weight, bias, stride, padding, dilation, groups):
    """aten::cudnn_convolution_relu(self, weight, bias, stride, padding, dilation, groups), written out."""
    return torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups).clamp_min(0)


def _cudnn_conv_add_relu_reference(x, weight, z, alpha, bias, stride, padding, dilation, groups):
    """aten::cudnn_convolution_add_relu(self, weight, z, alpha, bias, stride, padding, dilation, groups)."""
    return (torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups) + alpha * z).clamp_min(0)


def _expected_fusions(model: nn.Module) -> int:
    """Conv + ReLU sites of the unfolded model, counted from its structure and the blocks' known forwards."""
    from unet_lab.unet_core.segmentation.architectures.blocks import ResidualDoubleConv
    from unet_lab.unet_core.segmentation.architectures.resnet import BasicBlock, Bottleneck, ResNetEncoder

    count = 0
    for m in model.modules():
        if type(m) is nn.Sequential or type(m).__name__ == "Conv2dReLU":
            items = list(m)
            count += sum(1 for a, b, c in zip(items, items[1:], items[2:], strict=False)
                         if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and isinstance(c, nn.ReLU))
        elif isinstance(m, (ResidualDoubleConv, BasicBlock)):
            count += 2  # relu(norm1(conv1 x)); relu(norm2(conv2 h) + shortcut)
        elif isinstance(m, Bottleneck):
            count += 3
        elif isinstance(m, ResNetEncoder):
            count += 1  # the stem: relu(bn1(conv1 x))
    return count


@pytest.mark.parametrize("case", ["unet", "attention_unet", "residual_unet", "smp_unet", "smp_unet_r50"])
def test_conv_relu_fusion_rewrites_conv_relu_sites_and_keeps_the_output(case, monkeypatch):
    arch, hp = CASES[case]
    model = _bn_model(arch, hp)
    folded = bn_folding.fold_batch_norms(model)
    expected = _expected_fusions(model)
    assert conv_relu.fuse_conv_relu(folded) == expected > 0
    assert _count(folded, conv_relu.ConvReLU) == expected
    assert _count(folded, nn.ReLU) == 0  # in these architectures every ReLU follows a conv (+ BN [+ residual])
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        reference = model(x)
        assert torch.allclose(folded(x), reference, rtol=1e-9, atol=1e-12)  # CPU: conv then relu
        # the fused branch, with the cuDNN ops replaced by their definitions: the arguments are passed right
        monkeypatch.setattr(torch, "cudnn_convolution_relu", _cudnn_conv_relu_reference, raising=False)
        monkeypatch.setattr(torch, "cudnn_convolution_add_relu", _cudnn_conv_add_relu_reference, raising=False)
        monkeypatch.setattr(conv_relu.ConvReLU, "fusable", lambda self, x: True)
        monkeypatch.setattr(conv_relu.ConvReLU, "_pick", lambda self, x, z: True)
        assert torch.allclose(folded(x), reference, rtol=1e-9, atol=1e-12)
    layers = [m for m in folded.modules() if isinstance(m, conv_relu.ConvReLU)]
    ran = [m for m in layers if m.choice]  # smp encoders with depth < 5 keep layers that never run
    assert ran and all(list(m.choice.values()) == [True] for m in ran)
    residual_adds = sum(any(k[-1] is not None for k in m.choice) for m in ran)
    assert residual_adds == sum(1 for m in folded.modules() if isinstance(m, conv_relu.FusedResidual) and m.last.choice)
    assert (residual_adds > 0) == (case in ("residual_unet", "smp_unet", "smp_unet_r50"))


def test_conv_relu_falls_back_when_the_fused_kernel_fails_or_disagrees(monkeypatch, caplog):
    torch.manual_seed(3)
    block = conv_relu.ConvReLU(nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1).double())
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    expected = torch.relu(block.conv(x))
    with torch.no_grad():
        z = torch.randn_like(expected)
        expected_add = torch.relu(block.conv(x) + z)
    monkeypatch.setattr(conv_relu.ConvReLU, "fusable", lambda self, x: True)

    def no_engine(*args):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED")

    monkeypatch.setattr(torch, "cudnn_convolution_relu", no_engine, raising=False)
    with torch.no_grad():
        assert torch.allclose(block(x), expected)
        assert torch.allclose(block(x, z), expected_add)
    assert list(block.choice.values()) == [False, False]

    block.choice.clear()
    monkeypatch.setattr(torch, "cudnn_convolution_relu", lambda *a: _cudnn_conv_relu_reference(*a) + 1.0,
                        raising=False)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        assert torch.allclose(block(x), expected)
    assert list(block.choice.values()) == [False] and "disagrees" in caplog.text


@pytest.mark.slow
def test_real_torch_compile_runs_or_falls_back_cleanly(caplog):
    # the real torch.compile on a tiny model (needs a C++ compiler on CPU); either way the output is right
    model = _bn_model("unet", dict(base_channels=2, depth=1, out_channels=1), dtype=torch.float32)
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        forward = fast.prepare_inference(model, "cpu", "compiled")
        x = torch.rand(2, 3, 16, 16)
        got = forward(x)
        expected = model(x)
    assert forward.speed in ("compiled", "fast")
    assert (forward.speed == "fast") == ("torch.compile failed" in caplog.text)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_compiled_keeps_compiling_after_a_bad_input(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: module)  # "compiles" to itself
    model = _fp32_model("unet")
    forward = fast.prepare_inference(model, "cpu", "compiled")
    with pytest.raises(SegmentationError, match="input channel"):
        forward(torch.rand(1, 4, 16, 16))  # the model's own error reaches the caller
    assert forward.speed == "compiled"
