"""The standalone MODEL (UNetPatcher): clone isolation, weight patches, patch points, dtypes."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fixtures_diffusion import TINY_SD1, TINY_SDXL, make_spec, random_ldm_state_dict, sdxl_inputs
from unet_lab.unet_core.diffusion.embeddings import sdxl_adm_embedding
from unet_lab.unet_core.diffusion.patcher import UNetPatcher, create_model_patcher
from unet_lab.unet_core.diffusion.unet import UNetModel
from unet_lab.unet_core.diffusion.weight_patch import calculate_weight
from unet_lab.unet_core.errors import CheckpointError

KEY = "input_blocks.4.1.transformer_blocks.0.attn2.to_q.weight"
CONV_KEY = "output_blocks.3.0.in_layers.2.weight"


@pytest.fixture(scope="module")
def sd1_sd():
    return random_ldm_state_dict(TINY_SD1, seed=11)


@pytest.fixture
def patcher(sd1_sd) -> UNetPatcher:
    return create_model_patcher(dict(sd1_sd), make_spec(TINY_SD1))


def _inputs(config=TINY_SD1, batch=2, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, size, size, generator=gen)
    t = torch.tensor([5.0, 700.0][:batch])
    ctx = torch.randn(batch, 6, config.cross_attention_dim, generator=gen)
    return x, t, ctx


def _reference(sd: dict, config=TINY_SD1) -> UNetModel:
    model = UNetModel(config)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def test_patcher_runs_like_the_plain_unet_and_exposes_comfy_names(patcher, sd1_sd):
    x, t, ctx = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(patcher.apply_model(x, t, ctx), _reference(sd1_sd)(x, t, ctx), atol=0, rtol=0)
    keys = patcher.model_state_dict().keys()
    assert all(k.startswith("diffusion_model.") for k in keys)
    assert len(keys) == len(sd1_sd)
    assert patcher.model.model_config == TINY_SD1 and patcher.model.unet_config == TINY_SD1
    assert patcher.model.family == "sd1" and patcher.model.prediction == "epsilon"
    assert "transformer_options" in patcher.model_options


def test_add_patches_keeps_only_model_keys_and_stores_comfy_tuples(patcher):
    delta = torch.ones(64, 64)
    taken = patcher.add_patches({"diffusion_model." + KEY: ("diff", (delta,)), "diffusion_model.nope": ("diff", (delta,)),
                                 KEY: ("diff", (delta,))}, 0.5, 0.9)
    assert taken == ["diffusion_model." + KEY]  # bare keys are not model keys (ComfyUI's rule)
    entry = patcher.patches["diffusion_model." + KEY]
    assert len(entry) == 1 and entry[0][0] == 0.5 and entry[0][2] == 0.9 and entry[0][3] is None
    kp = patcher.get_key_patches()["diffusion_model." + KEY]
    assert kp[0][0].shape == (64, 64) and kp[1][1][0] == "diff"


def test_calculate_weight_matches_comfy_semantics():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 6, generator=gen)
    d1, d2 = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    out = calculate_weight([(0.5, ("diff", (d1,)), 0.8, None, None), (2.0, (d2,), 1.0, None, None)], w.clone(), "k")
    torch.testing.assert_close(out, 0.8 * w + 0.5 * d1 + 2.0 * d2)
    # "set" replaces; offset restricts to a slice; function wraps the scaled delta
    s = torch.full((4, 6), 3.0)
    torch.testing.assert_close(calculate_weight([(1.0, ("set", (s,)), 1.0, None, None)], w.clone(), "k"), s)
    piece = torch.ones(2, 6)
    out = calculate_weight([(1.5, ("diff", (piece,)), 1.0, (0, 1, 2), torch.tanh)], w.clone(), "k")
    expected = w.clone()
    expected[1:3] += torch.tanh(1.5 * piece)
    torch.testing.assert_close(out, expected)

    class Scale:  # a WeightAdapter: returns weight + strength * (low-rank product)
        def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                             intermediate_dtype=torch.float32, original_weight=None):
            weight += function(strength * torch.ones_like(weight))
            return weight

    out = calculate_weight([(0.25, Scale(), 0.5, None, None)], w.clone(), "k")
    torch.testing.assert_close(out, 0.5 * w + 0.25)


def test_weight_patch_changes_output_like_a_reference_with_merged_weights(patcher, sd1_sd):
    gen = torch.Generator().manual_seed(4)
    d_attn = torch.randn(64, 64, generator=gen) * 0.2
    d_conv = torch.randn(*sd1_sd[CONV_KEY].shape, generator=gen) * 0.05
    clone = patcher.clone()
    clone.add_patches({"diffusion_model." + KEY: ("diff", (d_attn,)), "diffusion_model." + CONV_KEY: (d_conv,)}, 0.7)
    merged = dict(sd1_sd)
    merged[KEY] = sd1_sd[KEY] + 0.7 * d_attn
    merged[CONV_KEY] = sd1_sd[CONV_KEY] + 0.7 * d_conv
    x, t, ctx = _inputs()
    with torch.no_grad():
        got = clone.apply_model(x, t, ctx)
        torch.testing.assert_close(got, _reference(merged)(x, t, ctx), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got, _reference(sd1_sd)(x, t, ctx), atol=1e-4)
    baked = clone.baked_state_dict()
    assert set(baked) == set(sd1_sd)
    torch.testing.assert_close(baked[KEY], merged[KEY])
    torch.testing.assert_close(baked[CONV_KEY], merged[CONV_KEY])


def test_clone_patches_never_touch_the_original(patcher, sd1_sd):
    x, t, ctx = _inputs()
    before_weights = {k: v.clone() for k, v in patcher.diffusion_model.state_dict().items()}
    with torch.no_grad():
        before = patcher.apply_model(x, t, ctx)
    clone = patcher.clone()
    clone.add_patches({"diffusion_model." + KEY: ("diff", (torch.ones(64, 64),))}, 1.0, 0.5)
    clone.add_patches({"diffusion_model." + CONV_KEY: ("set", (torch.zeros_like(sd1_sd[CONV_KEY]),))})
    clone.set_model_output_block_patch(lambda h, hsp, opts: (h * 2, hsp))
    clone.set_model_attn1_replace(lambda q, k, v, extra: torch.zeros_like(q), "input", 1)
    with torch.no_grad():
        patched = clone.apply_model(x, t, ctx)
        _ = clone.baked_state_dict()
        after = patcher.apply_model(x, t, ctx)
    assert not torch.equal(patched, before)
    assert torch.equal(after, before)  # bitwise
    for k, v in patcher.diffusion_model.state_dict().items():
        assert torch.equal(v, before_weights[k]), k
    assert patcher.patches == {} and patcher.model_options == {"transformer_options": {}}
    assert clone.diffusion_model is patcher.diffusion_model  # weights shared, not copied
    # a clone of the clone extends, and leaves the first clone alone
    second = clone.clone()
    second.set_model_output_block_patch(lambda h, hsp, opts: (h, hsp))
    assert len(clone.model_options["transformer_options"]["patches"]["output_block_patch"]) == 1
    assert len(second.model_options["transformer_options"]["patches"]["output_block_patch"]) == 2


def test_block_patch_order_and_options(patcher):
    seen = []
    patcher.set_model_input_block_patch(lambda h, o: (seen.append(("in", o["block"], tuple(h.shape))), h)[1])
    patcher.set_model_input_block_patch_after_skip(lambda h, o: (seen.append(("skip", o["block"])), h)[1])
    patcher.set_model_patch(lambda h, o: (seen.append(("mid", o["block"], o["original_shape"])), h)[1],
                            "middle_block_patch")
    patcher.set_model_output_block_patch(
        lambda h, hsp, o: (seen.append(("out", o["block"], o["cond_or_uncond"], h.shape[2:] == hsp.shape[2:])), (h, hsp))[1])
    x, t, ctx = _inputs()
    with torch.no_grad():
        patcher.apply_model(x, t, ctx, transformer_options={"cond_or_uncond": [0, 1]})
    n_in = len(patcher.diffusion_model.input_blocks)
    ins = [s for s in seen if s[0] == "in"]
    assert [s[1] for s in ins] == [("input", i) for i in range(n_in)]
    assert ins[0][2] == (2, 32, 16, 16) and ins[-1][2] == (2, 64, 4, 4)
    assert [s[1] for s in seen if s[0] == "skip"] == [("input", i) for i in range(n_in)]
    assert [s for s in seen if s[0] == "mid"] == [("mid", ("middle", 0), [2, 4, 16, 16])]
    outs = [s for s in seen if s[0] == "out"]
    assert [s[1] for s in outs] == [("output", i) for i in range(len(patcher.diffusion_model.output_blocks))]
    assert all(s[2] == [0, 1] and s[3] for s in outs)
    # the order in the trace: all inputs, then middle, then outputs
    kinds = [s[0] for s in seen]
    assert kinds.index("mid") > max(i for i, k in enumerate(kinds) if k == "skip")
    assert kinds.index("mid") < kinds.index("out")


def test_output_block_patch_acts_where_comfy_says(patcher):
    """Doubling h before output block 3's concat == doubling output block 2's result (forward hook)."""
    def double_h(h, hsp, opts):
        return (h * 2, hsp) if opts["block"] == ("output", 3) else (h, hsp)

    x, t, ctx = _inputs()
    clone = patcher.clone()
    clone.set_model_output_block_patch(double_h)
    unet = patcher.diffusion_model
    with torch.no_grad():
        got = clone.apply_model(x, t, ctx)
        handle = unet.output_blocks[2].register_forward_hook(lambda m, i, out: out * 2)
        try:
            ref = unet(x, t, ctx)
        finally:
            handle.remove()
        plain = patcher.apply_model(x, t, ctx)
    torch.testing.assert_close(got, ref, atol=0, rtol=0)
    assert not torch.allclose(got, plain)


def _sdpa_reference(q, k, v, extra):
    b, n, inner = q.shape
    heads = extra["n_heads"]
    d = extra["dim_head"]
    assert heads * d == inner
    qh, kh, vh = (z.reshape(b, -1, heads, d).transpose(1, 2) for z in (q, k, v))
    w = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (w @ vh).transpose(1, 2).reshape(b, n, inner)


@pytest.mark.slow
def test_attention_patches_and_replace_keys(patcher):
    x, t, ctx = _inputs()
    with torch.no_grad():
        plain = patcher.apply_model(x, t, ctx)
    calls = []

    def replace(q, k, v, extra):
        calls.append((extra["block"], extra["block_index"], k.shape[1]))
        return _sdpa_reference(q, k, v, extra)

    c = patcher.clone()
    c.set_model_attn1_replace(replace, "input", 1)
    c.set_model_attn2_replace(replace, "output", 3, 0)
    c.set_model_attn1_patch(lambda n, cx, v, extra: (n, cx, v))
    c.set_model_attn2_output_patch(lambda n, extra: n)
    with torch.no_grad():
        same = c.apply_model(x, t, ctx)
    torch.testing.assert_close(same, plain, atol=1e-5, rtol=1e-5)  # written-out attention == SDPA
    assert calls == [(("input", 1), 0, 16 * 16), (("output", 3), 0, 6)]

    zero = patcher.clone()
    zero.set_model_attn2_patch(lambda n, cx, v, extra: (n, torch.zeros_like(cx), torch.zeros_like(v)))
    with torch.no_grad():
        assert not torch.allclose(zero.apply_model(x, t, ctx), plain, atol=1e-4)
    # a cross-attention with zero context == a model whose cross-attention sees zeros
    with torch.no_grad():
        torch.testing.assert_close(zero.apply_model(x, t, ctx), patcher.apply_model(x, t, torch.zeros_like(ctx)),
                                   atol=1e-6, rtol=1e-6)


def test_unet_function_wrapper_is_called(patcher):
    seen = {}

    def wrapper(apply, args):
        seen.update(args)
        return apply(args["input"], args["timestep"], **args["c"]) * 0.0 + 1.0

    c = patcher.clone()
    c.set_model_unet_function_wrapper(wrapper)
    x, t, ctx = _inputs()
    with torch.no_grad():
        out = c.apply_model(x, t, ctx)
    assert torch.equal(out, torch.ones_like(out)) and seen["input"] is x


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_stored_dtypes_compute_like_fp32_on_the_rounded_weights(sd1_sd, dtype):
    p = create_model_patcher(dict(sd1_sd), make_spec(TINY_SD1), weight_dtype=dtype)
    assert all(v.dtype == dtype for v in p.diffusion_model.state_dict().values())
    rounded = {k: v.to(dtype).to(torch.float32) for k, v in sd1_sd.items()}
    x, t, ctx = _inputs()
    with torch.no_grad():
        out = p.apply_model(x, t, ctx)
        ref = _reference(rounded)(x, t, ctx)
    assert out.dtype == torch.float32
    if dtype == torch.bfloat16:  # bf16 weights compute in bf16 on CPU: compare in norm
        assert ((out - ref).norm() / ref.norm()).item() < 3e-2
    else:  # fp16 / fp8 storage computes in fp32 on CPU
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # a weight patch on fp8 storage is applied in the compute dtype, never written back to fp8
    c = p.clone()
    c.add_patches({"diffusion_model." + KEY: ("diff", (torch.full((64, 64), 0.01),))})
    with torch.no_grad():
        assert not torch.equal(c.apply_model(x, t, ctx), out)
    assert p.diffusion_model.state_dict()[KEY].dtype == dtype


@pytest.mark.slow
def test_sdxl_patcher_takes_y(patcher):
    sd = random_ldm_state_dict(TINY_SDXL, seed=2)
    p = create_model_patcher(sd, make_spec(TINY_SDXL, family="sdxl"))
    x, t, ctx = _inputs(TINY_SDXL)
    te, ti = sdxl_inputs(2)
    y = sdxl_adm_embedding(te, ti, TINY_SDXL.addition_time_embed_dim)
    with torch.no_grad():
        a = p.apply_model(x, t, ctx, y=y)
        b = p.apply_model(x, t, ctx, y=torch.zeros_like(y))
    assert a.shape == x.shape and not torch.allclose(a, b)
    with pytest.raises(ValueError):
        p.apply_model(x, t, ctx)


def test_create_model_patcher_rejects_weights_that_do_not_fit(sd1_sd):
    bad = dict(sd1_sd)
    bad.pop("out.2.weight")
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="missing keys.*out.2.weight"):
        create_model_patcher(bad, make_spec(TINY_SD1, path="/x/unet.safetensors"))
    wrong = dict(sd1_sd)
    wrong["out.2.weight"] = torch.zeros(4, 8, 3, 3)
    with pytest.raises(CheckpointError, match="wrong shapes"):
        create_model_patcher(wrong, make_spec(TINY_SD1))


def test_model_options_deepcopied_on_clone(patcher):
    patcher.model_options["transformer_options"]["custom"] = {"a": [1]}
    c = patcher.clone()
    c.model_options["transformer_options"]["custom"]["a"].append(2)
    assert patcher.model_options["transformer_options"]["custom"] == {"a": [1]}
    assert copy.deepcopy(c.model_options)["transformer_options"]["custom"] == {"a": [1, 2]}


def test_a_failing_patched_run_puts_the_original_weights_back(patcher, sd1_sd):
    originals = {name: param for name, param in patcher.diffusion_model.named_parameters()}
    clone = patcher.clone()
    clone.add_patches({"diffusion_model." + KEY: ("diff", (torch.ones(64, 64),))}, 1.0)

    owner_path, _, leaf = KEY.rpartition(".")

    def fail(h, hsp, opts):
        # mid-run, the shared module holds the patched weight ...
        seen.append(patcher.diffusion_model.get_submodule(owner_path)._parameters[leaf] is originals[KEY])
        raise RuntimeError("patch failed")

    seen: list[bool] = []
    clone.set_model_output_block_patch(fail)
    x, t, ctx = _inputs()
    with torch.no_grad(), pytest.raises(RuntimeError, match="patch failed"):
        clone.apply_model(x, t, ctx)
    assert seen == [False]
    # ... and after the failure every parameter object is the original one again
    for name, param in patcher.diffusion_model.named_parameters():
        assert param is originals[name], name
    with torch.no_grad():
        torch.testing.assert_close(patcher.apply_model(x, t, ctx), _reference(sd1_sd)(x, t, ctx), atol=1e-5, rtol=1e-5)
