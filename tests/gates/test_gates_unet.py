"""The skip gate on our UNet through the standalone patcher (reduced SD1 / SDXL configs)."""

from __future__ import annotations

import pytest
import torch

from fixtures_gates import (
    reference_additive_alpha,
    reference_applied,
    reference_energy_alpha,
    run,
    tiny_config,
    tiny_patcher,
    unet_inputs,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures_gates.one_thread (a conftest plugin)


@pytest.fixture(scope="module")
def models():
    return {family: tiny_patcher(family) for family in ("sd1", "sdxl")}


def _gate(model, family, **kwargs):
    from unet_lab.unet_core.gates.apply import apply_skip_gate

    args = dict(strength=1.0)
    args.update(kwargs)
    return apply_skip_gate(model, tiny_config(family), family, **args)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_strength_zero_is_bitwise_the_unpatched_model(models, family):
    model = models[family]
    inputs = unet_inputs(model)
    ref = run(model, inputs, [0, 0][:1])
    for kwargs in ({"strength": 0.0}, {"strength": 0.0, "record_maps": True, "floor": 0.3},
                   {"strength": 1.0, "level_strengths": "0=0, 1=0, 2=0" + (", 3=0" if family == "sd1" else "")}):
        patched, _, _ = _gate(model, family, **kwargs)
        assert torch.equal(run(patched, inputs, [0]), ref), kwargs


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_output_moves_smoothly_and_monotonically(models, family):
    model = models[family]
    inputs = unet_inputs(model)
    ref = run(model, inputs)
    distances = [(run(_gate(model, family, strength=s, floor=0.1)[0], inputs) - ref).norm().item()
                 for s in (0.0, 0.01, 0.25, 0.5, 0.75, 1.0)]
    assert distances[0] == 0.0
    assert all(b > a for a, b in zip(distances, distances[1:], strict=False)), distances
    assert distances[1] < 0.05 * distances[-1], "a small strength must move the output only a little"
    # near 0 the change is first order in the strength: d(0.01) ~ 0.01 / 0.25 * d(0.25)
    assert distances[1] == pytest.approx(distances[2] * 0.04, rel=0.3)


def test_input_model_is_never_mutated(models):
    model = models["sd1"]
    inputs = unet_inputs(model)
    before = run(model, inputs)
    options_before = repr(model.model_options)
    patched, _, _ = _gate(model, "sd1", strength=1.0)
    assert patched is not model
    assert repr(model.model_options) == options_before
    assert torch.equal(run(model, inputs), before)
    assert not torch.equal(run(patched, inputs), before)


def test_pass_selection_on_the_unet_changes_only_its_chunk(models):
    model = models["sd1"]
    x, t, c, y = unet_inputs(model, batch=2)
    inputs = (torch.cat([x, x]), torch.cat([t, t]), torch.cat([c, c]), None)  # rows 0-1 uncond, 2-3 cond
    ref = run(model, inputs, [1, 0])
    cond_only = run(_gate(model, "sd1", apply_to="cond")[0], inputs, [1, 0])
    uncond_only = run(_gate(model, "sd1", apply_to="uncond")[0], inputs, [1, 0])
    assert torch.equal(cond_only[:2], ref[:2]) and not torch.equal(cond_only[2:], ref[2:])
    assert torch.equal(uncond_only[2:], ref[2:]) and not torch.equal(uncond_only[:2], ref[:2])
    # the same chunk gated alone gives the same rows as when gated inside a bigger batch
    both = run(_gate(model, "sd1", apply_to="both")[0], inputs, [1, 0])
    torch.testing.assert_close(cond_only[2:], both[2:])
    torch.testing.assert_close(uncond_only[:2], both[:2])


def _reference_patch(kind, strength, floor, coefficients=None, state=None):
    """A hand-written output_block_patch doing the documented math (float64 references)."""
    def patch(h, hsp, opts):
        block = opts["block"][1]
        if coefficients is not None and block not in coefficients:
            return h, hsp
        if kind == "energy":
            alpha = reference_energy_alpha(h, hsp)
        else:
            alpha = reference_additive_alpha(state[block], h, hsp)
        m = reference_applied(alpha, strength * (coefficients or {}).get(block, 1.0), floor)
        return h, (hsp.double() * m).to(hsp.dtype)
    return patch


def test_parameter_free_gate_on_the_unet_matches_the_written_math(models):
    model = models["sdxl"]
    inputs = unet_inputs(model)
    got = run(_gate(model, "sdxl", strength=0.7, floor=0.2, levels="1/8, 1/32", level_strengths="1/32=0.5")[0], inputs)
    reference = model.clone()
    # SDXL tiny (L=2): level 2 = output blocks 0-2, level 0 = blocks 6-8
    coefficients = {0: 0.5, 1: 0.5, 2: 0.5, 6: 1.0, 7: 1.0, 8: 1.0}
    reference.set_model_output_block_patch(_reference_patch("energy", 0.7, 0.2, coefficients))
    torch.testing.assert_close(got, run(reference, inputs), atol=1e-4, rtol=1e-4)


def test_trained_file_changes_the_output_as_the_math_says(models, tmp_path):
    from unet_lab.unet_core.gates.additive import AdditiveAttentionGate
    from unet_lab.unet_core.gates.levels import skip_blocks
    from unet_lab.unet_core.gates.trained import save_trained_gates

    model = models["sd1"]
    config = tiny_config("sd1")
    torch.manual_seed(3)
    blocks = {b.key: b for b in skip_blocks(config)}
    gates = {}
    for key in ("level0.0", "level2.1"):
        b = blocks[key]
        gate = AdditiveAttentionGate(b.skip_channels, b.gating_channels, 6, norm=None)
        with torch.no_grad():
            for p in gate.parameters():
                p.normal_(0, 0.4)
        gates[key] = gate
    path = save_trained_gates(tmp_path / "gates.safetensors", gates, "sd1", config)
    inputs = unet_inputs(model)
    ref = run(model, inputs)
    got = run(_gate(model, "sd1", strength=0.8, floor=0.1, weights=path)[0], inputs)
    assert not torch.equal(got, ref)
    state = {blocks[k].block_id: {n: v.detach() for n, v in g.state_dict().items()} for k, g in gates.items()}
    reference = model.clone()
    reference.set_model_output_block_patch(_reference_patch("trained", 0.8, 0.1, {k: 1.0 for k in state}, state))
    torch.testing.assert_close(got, run(reference, inputs), atol=1e-4, rtol=1e-4)


def test_wrong_family_file_is_refused_before_patching(models, tmp_path):
    from unet_lab.unet_core.errors import GateError
    from unet_lab.unet_core.gates.additive import AdditiveAttentionGate
    from unet_lab.unet_core.gates.trained import save_trained_gates

    config = tiny_config("sd1")
    path = save_trained_gates(tmp_path / "xl.safetensors", {"level3.0": AdditiveAttentionGate(64, 64, 4, norm=None)},
                              "sdxl", config)
    with pytest.raises(GateError, match="xl.safetensors: gates were trained for sdxl, but the model is sd1"):
        _gate(models["sd1"], "sd1", weights=path)


def _freeu_like(b=1.3, s=0.7):
    """A FreeU-shaped output_block_patch (scales half of h and all of hsp) with a call log."""
    calls = []

    def patch(h, hsp, opts):
        calls.append(opts["block"][1])
        h = h.clone()
        h[:, : h.shape[1] // 2] *= b
        return h, hsp * s
    return patch, calls


def test_composes_with_freeu_in_the_order_added(models):
    model = models["sd1"]
    inputs = unet_inputs(model)
    freeu, calls = _freeu_like()
    gate_then_freeu, _, _ = _gate(model, "sd1", strength=0.6)
    gate_then_freeu.set_model_output_block_patch(freeu)
    freeu_first = model.clone()
    freeu_first.set_model_output_block_patch(freeu)
    freeu_then_gate, _, _ = _gate(freeu_first, "sd1", strength=0.6)

    def reference(order):
        ref = model.clone()
        gate = _reference_patch("energy", 0.6, 0.0)
        f, _ = _freeu_like()
        ref.set_model_output_block_patch(lambda h, x, o: (lambda hx: f(*hx, o))(gate(h, x, o)) if order == "gf"
                                         else gate(*f(h, x, o), o))
        return run(ref, inputs)

    out_gf = run(gate_then_freeu, inputs)
    out_fg = run(freeu_then_gate, inputs)
    assert calls, "the FreeU-like patch must run"
    torch.testing.assert_close(out_gf, reference("gf"), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_fg, reference("fg"), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out_gf, out_fg, atol=1e-4), "the order must matter: the gate sees h and hsp"


def test_composes_with_weight_patches_in_either_order(models):
    model = models["sd1"]
    inputs = unet_inputs(model)
    gen = torch.Generator().manual_seed(7)
    key = "diffusion_model.output_blocks.5.0.out_layers.3.weight"
    weight = model.diffusion_model.state_dict()[key[len("diffusion_model."):]]
    delta = 0.2 * torch.randn(weight.shape, generator=gen)

    lora_first = model.clone()
    assert lora_first.add_patches({key: (delta,)}, 1.0) == [key]
    a, _, _ = _gate(lora_first, "sd1", strength=0.5)
    b, _, _ = _gate(model, "sd1", strength=0.5)
    b.add_patches({key: (delta,)}, 1.0)
    out_a, out_b = run(a, inputs), run(b, inputs)
    assert torch.equal(out_a, out_b)
    assert not torch.equal(out_a, run(_gate(model, "sd1", strength=0.5)[0], inputs))
