"""Our LDM-layout UNet against diffusers' UNet2DConditionModel with the same weights."""

from __future__ import annotations

import gc

import pytest
import torch

from fixtures_diffusion import (
    TINY_SD1,
    TINY_SD1_INPAINT,
    TINY_SD2,
    TINY_SDXL,
    diffusers_kwargs,
    diffusers_twin,
    ldm_from_diffusers,
    private_ldm_from_diffusers,
    randomize_,
    sdxl_inputs,
    shared_keymap,
)
from unet_lab.unet_core.diffusion.embeddings import sdxl_adm_embedding
from unet_lab.unet_core.diffusion.unet import UNetModel
from unet_lab.unet_core.unet_config import SD1_CONFIG, SD2_CONFIG, SDXL_CONFIG


def _ours_from(diff_model, config) -> UNetModel:
    sd = ldm_from_diffusers(diff_model.state_dict(), config)
    with torch.device("meta"):
        ours = UNetModel(config)
    ours.load_state_dict(sd, strict=True, assign=True)
    return ours.eval()


def _sdxl_y_reference(text_embeds, time_ids, dim):
    """SGM's ADM vector written out: cos/sin embedding of each of the 6 ids, after pooled text."""
    half = dim // 2
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half) / half)
    args = time_ids.reshape(-1, 1) * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1).reshape(time_ids.shape[0], -1)
    return torch.cat([text_embeds, emb], dim=1)


@pytest.mark.slow
@pytest.mark.parametrize("config,size", [(TINY_SD1, (16, 16)), (TINY_SD2, (16, 24)),
                                         (TINY_SDXL, (16, 16)), (TINY_SD1_INPAINT, (16, 16)),
                                         (TINY_SD2, (22, 14))],
                         ids=["sd1", "sd2", "sdxl", "sd1_inpaint", "sd2_odd_size"])
def test_reduced_configs_match_diffusers(config, size):
    twin = diffusers_twin(config, seed=3)
    ours = _ours_from(twin, config)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, config.in_channels, *size, generator=gen)
    t = torch.tensor([3.0, 871.0])
    ctx = torch.randn(2, 9, config.cross_attention_dim, generator=gen)
    kwargs, y = {}, None
    if config.addition_embed_type:
        text_embeds, time_ids = sdxl_inputs(2)
        kwargs = {"added_cond_kwargs": {"text_embeds": text_embeds, "time_ids": time_ids}}
        y = sdxl_adm_embedding(text_embeds, time_ids, config.addition_time_embed_dim)
        torch.testing.assert_close(y, _sdxl_y_reference(text_embeds, time_ids, config.addition_time_embed_dim),
                                   atol=1e-6, rtol=0)
        assert y.shape[1] == config.projection_class_embeddings_input_dim
    with torch.no_grad():
        ref = twin(x, t, ctx, **kwargs).sample
        out = ours(x, t, ctx, y=y)
    assert out.shape == ref.shape == (2, config.out_channels, *size)
    assert ref.abs().max() > 1e-2  # the comparison is not between two near-zero tensors
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("config,keys,params", [(SD1_CONFIG, 686, 859_520_964),
                                                (SD2_CONFIG, 686, 865_910_724),
                                                (SDXL_CONFIG, 1680, 2_567_463_684)],
                         ids=["sd1", "sd2", "sdxl"])
def test_real_configs_have_the_real_keys_and_shapes(config, keys, params):
    """Built on the meta device: names/shapes equal diffusers' real-config model, renamed to LDM."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in UNetModel(config).state_dict().items()}
        twin = UNet2DConditionModel(**diffusers_kwargs(config))
    renamed = private_ldm_from_diffusers(twin.state_dict(), config)
    assert len(ours) == keys
    assert sum(torch.Size(s).numel() for s in ours.values()) == params
    assert ours == {k: tuple(v.shape) for k, v in renamed.items()}
    convert = shared_keymap()
    if convert is not None:  # the shared key map agrees with the renaming table written out in fixtures_diffusion
        assert set(convert(twin.state_dict(), config)) == set(renamed)


def test_ldm_key_spot_checks():
    with torch.device("meta"):
        sd = UNetModel(SDXL_CONFIG).state_dict()
    assert tuple(sd["label_emb.0.0.weight"].shape) == (1280, 2816)
    assert tuple(sd["input_blocks.4.1.proj_in.weight"].shape) == (640, 640)  # linear proj_in
    assert tuple(sd["input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight"].shape) == (1280, 2048)
    assert tuple(sd["output_blocks.2.2.conv.weight"].shape) == (1280, 1280, 3, 3)
    assert "input_blocks.1.1.norm.weight" not in sd  # level 0 of SDXL has no attention
    with torch.device("meta"):
        sd1 = UNetModel(SD1_CONFIG).state_dict()
    assert tuple(sd1["input_blocks.1.1.proj_in.weight"].shape) == (320, 320, 1, 1)  # conv proj_in
    assert tuple(sd1["output_blocks.2.1.conv.weight"].shape) == (1280, 1280, 3, 3)
    assert tuple(sd1["input_blocks.3.0.op.weight"].shape) == (320, 320, 3, 3)
    assert tuple(sd1["output_blocks.11.0.skip_connection.weight"].shape) == (320, 640, 1, 1)


@pytest.mark.slow
def test_full_size_sd1_matches_diffusers():
    """Real SD1 config (859.5 M params); weights shared between the two models (one copy)."""
    from diffusers import UNet2DConditionModel

    config = SD1_CONFIG
    with torch.device("meta"):
        twin = UNet2DConditionModel(**diffusers_kwargs(config))
    twin = twin.to_empty(device="cpu").eval()
    try:
        randomize_(twin, seed=5)
        ours = _ours_from(twin, config)  # assign=True: the same tensors, no second copy
        gen = torch.Generator().manual_seed(2)
        x = torch.randn(1, 4, 32, 32, generator=gen)
        t = torch.tensor([421.0])
        ctx = torch.randn(1, 8, 768, generator=gen)
        with torch.no_grad():
            ref = twin(x, t, ctx).sample
            out = ours(x, t, ctx)
        assert ref.abs().max() > 1e-2
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    finally:
        del twin
        ours = None
        gc.collect()
