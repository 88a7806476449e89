"""The diffusers <-> LDM key map, checked against diffusers' own UNet and known LDM names."""

from __future__ import annotations

import pytest
import torch

from fixtures_checkpoints import REAL_KEYS, REAL_PARAMS_M, diffusers_meta_state_dict, diffusers_shapes
from unet_lab.unet_core.checkpoints.keymap import (
    convert_diffusers_to_ldm,
    convert_ldm_to_diffusers,
    diffusers_to_ldm_keymap,
    ldm_to_diffusers_keymap,
)
from unet_lab.unet_core.errors import CheckpointError
from unet_lab.unet_core.unet_config import SD1_CONFIG, SD2_CONFIG, SDXL_CONFIG, UNetConfig

REAL = {"sd1": SD1_CONFIG, "sd2": SD2_CONFIG, "sdxl": SDXL_CONFIG}
REDUCED = {
    "tiny_sd1": UNetConfig(block_out_channels=(32, 64, 64), transformer_layers_per_block=(1, 1, 0),
                           num_attention_heads=(2, 2, 2), cross_attention_dim=48, norm_num_groups=8),
    "tiny_sdxl": UNetConfig(block_out_channels=(32, 64, 64), transformer_layers_per_block=(0, 1, 2),
                            num_attention_heads=(1, 2, 2), cross_attention_dim=64, norm_num_groups=8,
                            use_linear_projection=True, addition_embed_type="text_time",
                            addition_time_embed_dim=8, projection_class_embeddings_input_dim=64),
    # a hole in the middle, one res block per level, deeper transformers, two levels only
    "hole_l1": UNetConfig(block_out_channels=(32, 48, 64), layers_per_block=1, transformer_layers_per_block=(2, 0, 3),
                          num_attention_heads=(4, 4, 4), cross_attention_dim=40, norm_num_groups=8,
                          use_linear_projection=True),
    "two_levels_l3": UNetConfig(in_channels=9, out_channels=8, block_out_channels=(32, 32), layers_per_block=3,
                                transformer_layers_per_block=(1, 1), num_attention_heads=(2, 2),
                                cross_attention_dim=24, norm_num_groups=8),
    "attention_only_in_middle": UNetConfig(block_out_channels=(16, 32), transformer_layers_per_block=(0, 0),
                                           num_attention_heads=(2, 2), cross_attention_dim=16, norm_num_groups=8),
}


@pytest.mark.parametrize("name", [*REAL, *REDUCED])
def test_keymap_covers_exactly_diffusers_keys(name):
    config = {**REAL, **REDUCED}[name]
    keymap = diffusers_to_ldm_keymap(config)
    theirs = diffusers_shapes(config)
    assert set(keymap) == set(theirs)
    assert len(set(keymap.values())) == len(keymap)  # a bijection
    assert ldm_to_diffusers_keymap(config) == {v: k for k, v in keymap.items()}


@pytest.mark.parametrize("family", list(REAL))
def test_real_key_and_parameter_counts_match_facts(family):
    shapes = diffusers_shapes(REAL[family])
    ldm = convert_diffusers_to_ldm(shapes, REAL[family])
    assert len(ldm) == REAL_KEYS[family]
    params = sum(torch.Size(s).numel() for s in ldm.values())
    assert round(params / 1e6, 1) == REAL_PARAMS_M[family]
    n_input_blocks = len({k.split(".")[1] for k in ldm if k.startswith("input_blocks.")})
    assert n_input_blocks == (12 if family != "sdxl" else 9)


# Names and shapes as they appear in the released LDM/SGM files (sd-v1-4, v2-1, sd_xl_base_1.0).
KNOWN_LDM = {
    "sd1": {
        "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),       # 1x1 conv in SD1
        "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 768),
        "middle_block.1.transformer_blocks.0.ff.net.0.proj.weight": (10240, 1280),
        "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),        # level 3 has no attention: slot 1
        "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "output_blocks.11.1.proj_out.weight": (320, 320, 1, 1),
        "output_blocks.0.0.skip_connection.weight": (1280, 2560, 1, 1),
        "time_embed.0.weight": (1280, 320), "time_embed.2.weight": (1280, 1280),
        "out.0.weight": (320,), "out.2.weight": (4, 320, 3, 3), "input_blocks.0.0.weight": (320, 4, 3, 3),
    },
    "sd2": {
        "input_blocks.1.1.proj_in.weight": (320, 320),             # linear in SD2
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        "output_blocks.11.1.transformer_blocks.0.norm1.bias": (320,),
    },
    "sdxl": {
        "label_emb.0.0.weight": (1280, 2816), "label_emb.0.2.weight": (1280, 1280),
        "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight": (640, 2048),
        "input_blocks.7.1.transformer_blocks.9.ff.net.2.weight": (1280, 5120),
        "middle_block.1.transformer_blocks.9.norm3.weight": (1280,),
        "output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),        # level 2 has attention: slot 2
        "output_blocks.5.2.conv.weight": (640, 640, 3, 3),
        "output_blocks.8.0.out_layers.3.weight": (320, 320, 3, 3),
        "output_blocks.0.1.transformer_blocks.9.attn1.to_out.0.bias": (1280,),
    },
}


@pytest.mark.parametrize("family", list(KNOWN_LDM))
def test_known_ldm_names_and_shapes(family):
    ldm = convert_diffusers_to_ldm(diffusers_shapes(REAL[family]), REAL[family])
    for key, shape in KNOWN_LDM[family].items():
        assert ldm.get(key) == shape, key
    if family == "sdxl":
        assert not any(k.startswith(("input_blocks.1.1.", "input_blocks.2.1.", "output_blocks.8.1.")) for k in ldm)
        assert "output_blocks.8.1.conv.weight" not in ldm  # the last up block has no upsampler


def test_keymap_matches_our_own_unet_module_when_present():
    """The model helper's UNetModel (LDM names) has exactly the mapped names and the same shapes."""
    try:
        from unet_lab.unet_core.diffusion.unet import UNetModel
    except ImportError:
        pytest.skip("unet_core.diffusion.unet not available")
    for config in (*REAL.values(), REDUCED["tiny_sdxl"], REDUCED["hole_l1"]):
        with torch.device("meta"):
            ours = {k: tuple(v.shape) for k, v in UNetModel(config).state_dict().items()}
        assert ours == convert_diffusers_to_ldm(diffusers_shapes(config), config)


@pytest.mark.parametrize("name", ["sd1", "sdxl", *REDUCED])
def test_round_trip_keeps_the_very_same_tensor_objects(name):
    config = {**REAL, **REDUCED}[name]
    sd = diffusers_meta_state_dict(config)
    ldm = convert_diffusers_to_ldm(sd, config)
    back = convert_ldm_to_diffusers(ldm, config)
    assert list(back) == list(sd)
    assert all(back[k] is sd[k] for k in sd)
    keymap = diffusers_to_ldm_keymap(config)
    assert all(ldm[keymap[k]] is sd[k] for k in sd)


def test_round_trip_with_real_tensors_reduced_config():
    config = REDUCED["tiny_sdxl"]
    from diffusers import UNet2DConditionModel

    from fixtures_checkpoints import diffusers_unet_kwargs
    sd = UNet2DConditionModel(**diffusers_unet_kwargs(config)).state_dict()
    ldm = convert_diffusers_to_ldm(sd, config)
    assert all(ldm[ldm_key] is sd[d] for d, ldm_key in diffusers_to_ldm_keymap(config).items())
    assert {k: v.data_ptr() for k, v in convert_ldm_to_diffusers(ldm, config).items()} == \
        {k: v.data_ptr() for k, v in sd.items()}


def test_unknown_keys_are_refused_or_passed_through():
    config = REDUCED["tiny_sd1"]
    sd = dict(diffusers_meta_state_dict(config))
    sd["text_model.embeddings.token_embedding.weight"] = torch.empty(3, device="meta")
    with pytest.raises(CheckpointError, match="1 keys do not belong"):
        convert_diffusers_to_ldm(sd, config)
    loose = convert_diffusers_to_ldm(sd, config, strict=False)
    assert "text_model.embeddings.token_embedding.weight" in loose
    # an SDXL state dict is not an SD1 one
    with pytest.raises(CheckpointError):
        convert_diffusers_to_ldm(diffusers_meta_state_dict(REDUCED["tiny_sdxl"]), config)
