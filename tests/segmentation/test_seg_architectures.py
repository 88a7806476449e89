"""One parametrized template over every segmentation architecture (small widths, CPU).

Checks behaviour, not the code's own output: shapes at odd sizes, gradients reaching every
parameter, batch independence in eval mode, the documented pad-and-crop (never a resize),
save/load round trips, and hyper-parameter validation errors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fixtures_segmodels import randomize_batchnorm_stats, template_cases
from unet_lab.unet_core.errors import SegmentationError
from unet_lab.unet_core.segmentation.checkpoint import SegmentationMeta, load_segmentation, save_segmentation
from unet_lab.unet_core.segmentation.registry import ALL_ARCHITECTURES, ARCHITECTURES, build_model

CASES = template_cases()
IDS = [c[0] for c in CASES]


def _model(arch: str, hp: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, **hp)
    randomize_batchnorm_stats(model, seed)
    return model


def test_every_architecture_has_a_template_case():
    covered = {arch for _, arch, _ in CASES}
    assert covered == set(ALL_ARCHITECTURES)
    assert set(ARCHITECTURES) == {"unet", "unet_plus_plus", "attention_unet", "residual_unet", "unet3plus"}


@pytest.mark.parametrize("case,arch,hp", CASES, ids=IDS)
def test_forward_backward_reaches_every_parameter(case, arch, hp):
    model = _model(arch, hp).train()
    x = torch.rand(2, model.in_channels, 37, 45)
    target = torch.rand(2, model.out_channels, 37, 45)
    out = model(x)
    assert out.shape == (2, hp["out_channels"], 37, 45)
    loss = F.binary_cross_entropy_with_logits(out, target)
    loss.backward()
    # smp keeps every ResNet layer (so state dicts match) but a shallow encoder runs only
    # layer1..layer{depth-1}; those are the only parameters allowed to go without gradient.
    unused = tuple(f"encoder.layer{k}." for k in range(hp.get("encoder_depth", 5), 5))
    for name, p in model.named_parameters():
        if unused and name.startswith(unused):
            assert p.grad is None, name
            continue
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
    assert sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None) > 0


@pytest.mark.parametrize("size", [(97, 131), (500, 375)], ids=["97x131", "500x375"])
@pytest.mark.parametrize("case,arch,hp", CASES, ids=IDS)
def test_odd_sizes_keep_the_input_size(case, arch, hp, size):
    model = _model(arch, hp).eval()
    with torch.no_grad():
        out = model(torch.rand(1, model.in_channels, *size))
    assert out.shape == (1, hp["out_channels"], *size)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("case,arch,hp", CASES, ids=IDS)
def test_batch_of_two_equals_each_image_alone(case, arch, hp):
    model = _model(arch, hp).eval()
    x = torch.rand(2, model.in_channels, 41, 53)
    with torch.no_grad():
        both = model(x)
        first, second = model(x[:1]), model(x[1:])
    torch.testing.assert_close(both, torch.cat([first, second]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first, second)  # the two images really differ


@pytest.mark.parametrize("case,arch,hp", CASES, ids=IDS)
def test_pads_to_the_divisor_and_crops_instead_of_resizing(case, arch, hp):
    model = _model(arch, hp).eval()
    d = model.size_divisor
    h, w = 2 * d + 3, d + 5
    x = torch.rand(1, model.in_channels, h, w)
    mode = hp.get("pad_mode", "reflect")
    ph, pw = 3 * d - h, 2 * d - w
    padded = F.pad(x, [0, pw, 0, ph]) if mode == "zeros" else F.pad(x, [0, pw, 0, ph], mode=mode)
    with torch.no_grad():
        out = model(x)
        full = model(padded)
    assert full.shape[-2:] == (3 * d, 2 * d)
    torch.testing.assert_close(out, full[..., :h, :w], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case,arch,hp", CASES, ids=IDS)
def test_save_then_load_gives_identical_outputs(case, arch, hp, tmp_path):
    model = _model(arch, hp, seed=3).eval()
    meta = SegmentationMeta.for_model(model, class_names=[f"c{i}" for i in range(hp["out_channels"])],
                                      threshold=0.35)
    path = save_segmentation(tmp_path / f"{case}.safetensors", model, meta)
    loaded, meta2 = load_segmentation(path)
    assert loaded.config == model.config
    assert meta2.class_names == meta.class_names and meta2.threshold == pytest.approx(0.35)
    assert meta2.normalization == meta.normalization and meta2.architecture == arch
    assert not loaded.training
    x = torch.rand(2, model.in_channels, 29, 33)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_deep_supervision_heads_and_their_mean():
    model = _model("unet_plus_plus", dict(base_channels=8, depth=3, deep_supervision=True)).eval()
    x = torch.rand(1, 3, 30, 30)
    with torch.no_grad():
        heads = model.forward_heads(x)
        out = model(x)
    assert len(heads) == 3 and all(h.shape == (1, 1, 30, 30) for h in heads)
    torch.testing.assert_close(out, (heads[0] + heads[1] + heads[2]) / 3)
    plain = build_model("unet_plus_plus", base_channels=8, depth=3)
    assert len(plain.forward_heads(x)) == 1


def test_milesial_unet_parameter_count():
    # milesial/Pytorch-UNet README: UNet(3, 2, bilinear=False) has 31.04 M parameters.
    model = build_model("unet", in_channels=3, out_channels=2)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(31.04e6, abs=0.005e6)
    assert model.size_divisor == 16 and model.config["architecture"] == "unet"


def test_attention_unet_gates_every_skip():
    model = _model("attention_unet", dict(base_channels=8, depth=3)).eval()
    gates = [m for m in model.modules() if type(m).__name__ == "AdditiveAttentionGate"]
    assert len(gates) == 3
    maps = model.attention_maps(torch.rand(1, 3, 33, 35))
    assert [tuple(a.shape[-2:]) for a in maps] == [(33, 35), (17, 18), (9, 9)]
    assert all(((a > 0) & (a < 1)).all() for a in maps)


def test_residual_blocks_have_projection_shortcuts():
    model = build_model("residual_unet", base_channels=8, depth=2)
    assert tuple(model.inc.shortcut[0].weight.shape) == (8, 3, 1, 1)
    assert model.down1.maxpool_conv[1].shortcut[0].kernel_size == (1, 1)


@pytest.mark.parametrize("arch,hp,needle", [
    ("unet", dict(norm="layer"), "norm"),
    ("unet", dict(depth=0), "depth"),
    ("unet", dict(base_channels=2.5), "base_channels"),
    ("unet", dict(upsampling="nearest"), "upsampling"),
    ("unet", dict(channels=3), "unknown hyper-parameter"),
    ("unet_plus_plus", dict(deep_supervision="yes"), "deep_supervision"),
    ("attention_unet", dict(gate_inter_ratio=0), "gate_inter_ratio"),
    ("smp_unet", dict(encoder_name="efficientnet-b0"), "encoder_name"),
    ("smp_unet", dict(decoder_channels=[16, 8]), "decoder_channels"),
    ("transunet", {}, "unknown segmentation architecture"),
])
def test_bad_hparams_raise_segmentation_error(arch, hp, needle):
    with pytest.raises(SegmentationError, match=needle):
        build_model(arch, **hp)


def test_bad_input_raises_segmentation_error():
    model = build_model("unet", base_channels=4, depth=2)
    with pytest.raises(SegmentationError, match="input channel"):
        model(torch.rand(1, 1, 16, 16))
    with pytest.raises(SegmentationError, match="B, C, H, W"):
        model(torch.rand(3, 16, 16))


def test_build_model_accepts_a_models_own_config():
    model = build_model("attention_unet", base_channels=4, depth=2, gate_inter_ratio=0.25)
    again = build_model("attention_unet", **model.config)
    assert again.config == model.config
    with pytest.raises(SegmentationError, match="attention_unet"):
        build_model("unet", **model.config)
