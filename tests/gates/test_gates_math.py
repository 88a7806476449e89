"""The skip gate's math on plain tensors, against the documented formulas written out in the test."""

from __future__ import annotations

import copy

import pytest
import torch

from fixtures_gates import reference_applied, reference_energy_alpha, tiny_config


def _features(batch=4, ch_h=24, ch_x=16, size=8, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, ch_h, size, size, generator=gen).to(dtype)
    hsp = (torch.randn(batch, ch_x, size, size, generator=gen) * torch.linspace(0.2, 3, size)).to(dtype)
    return h, hsp


def _patch(strength=1.0, floor=0.0, apply_to="both", levels="all", level_strengths="", sharpness=1.0, recorder=None):
    from unet_lab.unet_core.gates.skip_gate import SkipGatePatch, build_settings

    settings = build_settings(tiny_config("sd1"), strength, levels, level_strengths, floor, sharpness, apply_to)
    return SkipGatePatch(settings, recorder=recorder)


def _opts(block=3, cond_or_uncond=None):
    opts = {"block": ("output", block)}
    if cond_or_uncond is not None:
        opts["cond_or_uncond"] = cond_or_uncond
    return opts


@pytest.mark.parametrize("sharpness", [1.0, 2.5])
def test_energy_alpha_matches_written_math(sharpness):
    from unet_lab.unet_core.gates.skip_gate import energy_alpha

    h, hsp = _features()
    got = energy_alpha(h, hsp, sharpness)
    assert got.dtype == torch.float32 and got.shape == (4, 1, 8, 8)
    torch.testing.assert_close(got.double(), reference_energy_alpha(h, hsp, sharpness), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strength,floor", [(1.0, 0.0), (0.5, 0.2), (0.3, 0.9), (2.0, 0.1)])
def test_patch_applies_the_documented_map(strength, floor):
    h, hsp = _features()
    h0, hsp0 = h.clone(), hsp.clone()
    out_h, out_x = _patch(strength, floor)(h, hsp, _opts())
    m = reference_applied(reference_energy_alpha(h0, hsp0), strength, floor)
    torch.testing.assert_close(out_x.double(), hsp0.double() * m, atol=1e-5, rtol=1e-5)
    assert out_h is h and torch.equal(h, h0), "h must pass through untouched"
    assert torch.equal(hsp, hsp0), "the caller's hsp must not be modified in place"


def test_strength_zero_is_bitwise_identity():
    h, hsp = _features(dtype=torch.float16)
    out_h, out_x = _patch(0.0)(h, hsp, _opts())
    assert out_x is hsp and out_h is h
    # a level left out, or a level strength of 0, is also untouched
    assert _patch(1.0, levels="0")(h, hsp, _opts(block=0))[1] is hsp
    assert _patch(1.0, level_strengths="0,1,1,0")(h, hsp, _opts(block=0))[1] is hsp
    # and blocks outside the decoder are never touched
    assert _patch(1.0)(h, hsp, {"block": ("input", 3)})[1] is hsp


def test_output_moves_linearly_and_monotonically_with_strength():
    h, hsp = _features(seed=3)
    distances = []
    for s in (0.0, 0.25, 0.5, 0.75, 1.0):
        distances.append((_patch(s)(h, hsp, _opts())[1] - hsp).norm().item())
    assert distances[0] == 0.0
    assert all(b > a for a, b in zip(distances, distances[1:], strict=False))
    # hsp changes linearly in the strength: d(s) = s * d(1)
    for s, d in zip((0.25, 0.5, 0.75), distances[1:4], strict=True):
        assert d == pytest.approx(s * distances[-1], rel=1e-5)


@pytest.mark.parametrize("floor", [0.0, 0.3, 0.75])
def test_maps_stay_within_floor_and_one(floor):
    from unet_lab.unet_core.gates.skip_gate import GateMapRecorder

    recorder = GateMapRecorder()
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(2, 8, 16, 16, generator=gen) * 50      # extreme contrasts push alpha to 0 / 1
    hsp = torch.randn(2, 8, 16, 16, generator=gen)
    hsp[:, :, :4] *= 1000
    _patch(1.0, floor, recorder=recorder)(h, hsp, _opts())
    gate = recorder.gate_map(3, 0)
    assert gate.min().item() >= floor - 1e-7 and gate.max().item() <= 1.0
    assert gate.max().item() - gate.min().item() > 0.5 * (1 - floor), "the map should use its range here"


@pytest.mark.parametrize("apply_to,acted", [("cond", [0]), ("uncond", [1]), ("both", [0, 1])])
def test_pass_selection_acts_only_on_its_chunk(apply_to, acted):
    h, hsp = _features(batch=4)
    _, out = _patch(1.0, apply_to=apply_to)(h, hsp, _opts(cond_or_uncond=[1, 0]))  # rows 0-1 uncond, 2-3 cond
    kind_of_row = [1, 1, 0, 0]
    m = reference_applied(reference_energy_alpha(h, hsp), 1.0, 0.0)
    for row, kind in enumerate(kind_of_row):
        if kind in acted:
            torch.testing.assert_close(out[row].double(), hsp[row].double() * m[row], atol=1e-5, rtol=1e-5)
        else:
            assert torch.equal(out[row], hsp[row]), f"row {row} ({'uncond' if kind else 'cond'}) must be untouched"


def test_pass_selection_without_the_chosen_pass_is_identity():
    h, hsp = _features(batch=2)
    assert _patch(1.0, apply_to="uncond")(h, hsp, _opts(cond_or_uncond=[0]))[1] is hsp
    # no cond_or_uncond entry: the batch counts as cond
    assert _patch(1.0, apply_to="uncond")(h, hsp, _opts())[1] is hsp
    assert _patch(1.0, apply_to="cond")(h, hsp, _opts())[1] is not hsp


def test_half_precision_keeps_dtype_and_matches_fp32():
    h, hsp = _features(dtype=torch.float16)
    out = _patch(0.7, 0.1)(h, hsp, _opts())[1]
    assert out.dtype == torch.float16
    ref = hsp.double() * reference_applied(reference_energy_alpha(h, hsp), 0.7, 0.1)
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-3)


def test_constant_features_do_not_blow_up():
    h = torch.ones(1, 4, 6, 6)
    hsp = torch.full((1, 4, 6, 6), 2.0)
    out = _patch(1.0)(h, hsp, _opts())[1]
    # standardised maps are 0 everywhere -> alpha = 0.5 -> m = 0.5
    torch.testing.assert_close(out, hsp * 0.5)


def test_patch_survives_deepcopy_as_comfyui_clone_does():
    from unet_lab.unet_core.gates.skip_gate import GateMapRecorder

    recorder = GateMapRecorder()
    patch = _patch(1.0, recorder=recorder)
    options = copy.deepcopy({"transformer_options": {"patches": {"output_block_patch": [patch]}}})
    copied = options["transformer_options"]["patches"]["output_block_patch"][0]
    h, hsp = _features()
    copied(h, hsp, _opts())
    assert (3, 0) in recorder.maps, "the recorder must stay shared through deepcopy"


@pytest.mark.parametrize("kwargs,needle", [
    ({"strength": -1.0}, "strength"), ({"floor": 1.5}, "floor"), ({"apply_to": "neg"}, "apply_to"),
    ({"levels": "7"}, "level 7"), ({"levels": "1/12"}, "1/12"), ({"level_strengths": "1,2"}, "4 levels"),
    ({"level_strengths": "1/8=x"}, "not a number"), ({"sharpness": 0.0}, "sharpness"),
])
def test_bad_settings_raise_gate_error(kwargs, needle):
    from unet_lab.unet_core.errors import GateError
    from unet_lab.unet_core.gates.skip_gate import build_settings

    args = {"strength": 1.0, "levels": "all", "level_strengths": "", "floor": 0.0, "sharpness": 1.0, "apply_to": "both"}
    args.update(kwargs)
    with pytest.raises(GateError, match=needle):
        build_settings(tiny_config("sd1"), **args)
