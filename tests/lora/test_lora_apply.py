"""LoRA formats applied to reduced SD1 and SDXL models, checked against the formulas in fixtures_lora.

Every format is made by code with its real key naming; the merged weights must equal
W + strength * block weight * delta (delta computed in fixtures_lora from the published formulas),
and the input MODEL must stay bitwise unchanged.
"""

from __future__ import annotations

import pytest
import torch

from fixtures_lora import FORMATS, dora_expected, make_lora, make_model, model_maps
from unet_lab.unet_core.errors import FamilyMismatchError, LoraError
from unet_lab.unet_core.lora.blocks import block_of
from unet_lab.unet_core.lora.plan import model_names, plan_lora

SPECS = {
    "sd1": "default=1, IN04=0.5, OUT03-05=0.2, M00=0, IN00=-1, OUT11=1.5, BASE=0.7",
    "sdxl": "default=0.9, IN=0.4, IN07=1.25, MID=0, OUT00-02=0.3, BASE=2",
}
STRENGTH = 0.8


@pytest.fixture(scope="module")
def models():
    return {family: make_model(family, seed=1 + i) for i, family in enumerate(("sd1", "sdxl"))}


def _apply(model, state, family, spec, strength=STRENGTH):
    from unet_lab.nodes.host.standalone import StandaloneHost

    host = StandaloneHost(device="cpu", show_progress=False)
    shapes = {k: tuple(v.shape) for k, v in model.diffusion_model.state_dict().items()}
    plan = plan_lora(state, model_names(shapes, model.config), model.config, family, strength=strength,
                     block_spec=spec, source="test-lora")
    patched, applied = host.add_lora_patches(model, state, plan)
    return host, plan, patched, applied


def _snapshot(model):
    return {k: v.clone() for k, v in model.diffusion_model.state_dict().items()}


def _assert_bitwise_same(model, snapshot):
    now = model.diffusion_model.state_dict()
    assert set(now) == set(snapshot)
    for k, v in snapshot.items():
        assert torch.equal(now[k], v), f"{k} changed in the input MODEL"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_merged_weights_follow_the_formulas(models, family, fmt):
    model = models[family]
    shapes, ldm_to_diffusers = model_maps(model)
    state, expected = make_lora(shapes, ldm_to_diffusers, fmt, seed=hash((family, fmt)) % 1000)
    before = _snapshot(model)
    host, plan, patched, applied = _apply(model, state, family, SPECS[family])
    assert not plan.parsed.unmatched_keys, plan.parsed.unmatched_keys[:5]
    assert "unmatched: none" in plan.report(applied)

    baked = patched.baked_state_dict()
    dora_scales = {k[: -len(".dora_scale")]: v for k, v in state.items() if k.endswith(".dora_scale")}
    for key, weight in before.items():
        if key not in expected:
            assert torch.equal(baked[key], weight), f"{key} changed though the LoRA does not touch it"
            continue
        block_weight = plan.weights[block_of(key)]
        scale = STRENGTH * block_weight
        if fmt == "dora" and key.endswith(".weight"):
            prefix = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
            want = dora_expected(weight, expected[key], dora_scales[prefix], scale)
        else:
            want = weight + scale * expected[key]
        err = (baked[key] - want).abs().max().item()
        assert err <= 1e-5, f"{fmt}/{family}: {key} off by {err} (block {block_of(key)} weight {block_weight})"
    assert expected, "the fixture made no module"

    # The patched clone runs, and running it leaves the input MODEL bitwise unchanged.
    cfg = model.config
    x = torch.randn(1, cfg.in_channels, 16, 16)
    context = torch.randn(1, 4, cfg.cross_attention_dim)
    y = torch.randn(1, cfg.projection_class_embeddings_input_dim) if cfg.projection_class_embeddings_input_dim else None
    if fmt in ("kohya", "loha"):
        out_patched = patched.apply_model(x, torch.tensor([500.0]), context, y=y)
        out_plain = model.apply_model(x, torch.tensor([500.0]), context, y=y)
        assert out_patched.shape == out_plain.shape and not torch.allclose(out_patched, out_plain)
    _assert_bitwise_same(model, before)
    assert not model.patches


def test_zero_block_weights_leave_those_blocks_alone(models):
    model = models["sd1"]
    shapes, l2d = model_maps(model)
    state, expected = make_lora(shapes, l2d, "kohya")
    host, plan, patched, applied = _apply(model, state, "sd1", "default=0, OUT03-05=1")
    baked = patched.baked_state_dict()
    original = model.diffusion_model.state_dict()
    touched = {block_of(k) for k in expected}
    assert {"OUT03", "OUT04", "OUT05"} <= touched and len(touched) > 3
    for key in expected:
        if block_of(key) in ("OUT03", "OUT04", "OUT05"):
            assert not torch.equal(baked[key], original[key])
        else:
            assert torch.equal(baked[key], original[key]), key
    report = plan.report(applied)
    assert "skipped (weight 0)" in report and "OUT04" in report


def _core_comfy_prefixes(shapes, ldm_to_diffusers):
    """The LoRA prefixes core ComfyUI maps for a UNet (ComfyUI 0.3.64, comfy/lora.py model_lora_keys_unet)."""
    core = set()
    for key in shapes:
        if key.endswith(".weight"):
            module = key[: -len(".weight")]
            core |= {"lora_unet_" + module.replace(".", "_"), "diffusion_model." + module}
    for key in ldm_to_diffusers.values():
        if key.endswith(".weight"):
            d = key[: -len(".weight")]
            core |= {"lora_unet_" + d.replace(".", "_"), "lycoris_" + d.replace(".", "_")}
            processor = d.replace(".to_", ".processor.to_")
            processor = processor[:-2] if processor.endswith(".to_out.0") else processor
            core |= {processor, "unet." + processor}
    return core


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["peft", "peft_base_model"])
def test_peft_keys_core_comfyui_drops_are_applied(models, fmt):
    model = models["sdxl"]
    shapes, l2d = model_maps(model)
    state, expected = make_lora(shapes, l2d, fmt)
    prefixes = {k.rsplit(".lora_", 1)[0] for k in state if ".lora_" in k}
    dropped = {p for p in prefixes if p not in _core_comfy_prefixes(shapes, l2d)}
    attention_dropped = [p for p in dropped if p.endswith(("attn1.to_q", "attn2.to_k", "attn1.to_out.0"))]
    assert attention_dropped, "the fixture should hold PEFT attention keys that core ComfyUI does not map"
    host, plan, patched, applied = _apply(model, state, "sdxl", "")
    assert {m.prefix for m in plan.parsed.modules} == prefixes
    assert not plan.parsed.unmatched_keys
    baked = patched.baked_state_dict()
    original = model.diffusion_model.state_dict()
    for prefix in attention_dropped:
        target = "diffusion_model." + next(m.weight_key for m in plan.parsed.modules if m.prefix == prefix)
        assert target in applied
        bare = target[len("diffusion_model."):]
        assert torch.allclose(baked[bare], original[bare] + STRENGTH * expected[bare], atol=1e-5)


def test_foreign_and_text_encoder_keys_are_reported_once(models):
    model = models["sd1"]
    shapes, l2d = model_maps(model)
    state, _ = make_lora(shapes, l2d, "kohya", limit=10)
    foreign = {
        "lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight": torch.zeros(4, 4),
        "lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 4),
        "some.random.tensor": torch.zeros(3),
        "lora_unet_mid_block_attentions_0_proj_in.hada_w1_a": torch.zeros(4, 4),   # incomplete LoHa
    }
    text_encoder = {
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(8, 4),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(4.0),
    }
    host, plan, patched, applied = _apply(model, {**state, **foreign, **text_encoder}, "sd1", "")
    report = plan.report(applied)
    assert sorted(plan.parsed.unmatched_keys) == sorted(foreign)
    for key in foreign:
        assert report.count(key) == 1, key
    assert "unmatched: 4 keys" in report
    assert "text encoder: 3 keys" in report
    assert len(plan.parsed.modules) == 10


def test_sdxl_lora_on_sd1_model_names_both_families(models):
    sdxl_shapes, sdxl_l2d = model_maps(models["sdxl"])
    state, _ = make_lora(sdxl_shapes, sdxl_l2d, "kohya_ldm")
    with pytest.raises(FamilyMismatchError) as err:
        _apply(models["sd1"], state, "sd1", "")
    assert "sd1" in str(err.value) and "sdxl" in str(err.value) and "test-lora" in str(err.value)
    sd1_shapes, sd1_l2d = model_maps(models["sd1"])
    state, _ = make_lora(sd1_shapes, sd1_l2d, "kohya")
    with pytest.raises(FamilyMismatchError, match="sdxl"):
        _apply(models["sdxl"], state, "sdxl", "")


def test_real_context_widths_tell_sd1_from_sd2():
    from unet_lab.unet_core.lora.keys import guess_family

    assert guess_family(["lora_unet_x.lora_up.weight"], [768]) == "sd1"
    assert guess_family(["lora_unet_x.lora_up.weight"], [1024]) == "sd2"
    assert guess_family(["lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha"]) == "sdxl"


def test_shape_mismatch_names_key_and_shapes(models):
    model = models["sd1"]
    shapes, l2d = model_maps(model)
    state, _ = make_lora(shapes, l2d, "kohya_ldm", limit=5)
    key = next(k for k in sorted(state) if k.endswith(".lora_up.weight") and state[k].ndim == 2)
    up = state[key]
    state[key] = torch.randn(up.shape[0] + 3, up.shape[1])
    with pytest.raises(LoraError) as err:
        _apply(model, state, "sd1", "")
    text = str(err.value)
    prefix = key[: -len(".lora_up.weight")]
    assert prefix in text and str(up.shape[0] + 3) in text and str(up.shape[0]) in text


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_names_the_key(models, bad):
    model = models["sd1"]
    shapes, l2d = model_maps(model)
    state, _ = make_lora(shapes, l2d, "loha", limit=5)
    key = sorted(k for k in state if k.endswith(".hada_w2_b"))[1]
    state[key] = state[key].clone()
    state[key][0, 0] = bad
    with pytest.raises(LoraError, match=key.replace(".", r"\.")):
        _apply(model, state, "sd1", "")
