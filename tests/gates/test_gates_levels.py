"""Skip levels derived from the config, checked against the real SD1/SD2/SDXL tables written by hand.

The tables come from the LDM layout (FACTS.md): SD1/SD2 have 12 input blocks
(conv_in, then per level 2 res-blocks and a downsampler except at the deepest level) and
SDXL 9; output block k takes the skip of input block N_in - 1 - k. The decoder res-block
input widths (h + hsp) are the real checkpoints' ``output_blocks.k.0.in_layers.0`` sizes.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

# output block -> (level, skip channels, gating channels, resolution relative to the image)
SD1_TABLE = {
    0: (3, 1280, 1280, "1/64"), 1: (3, 1280, 1280, "1/64"), 2: (3, 1280, 1280, "1/64"),
    3: (2, 1280, 1280, "1/32"), 4: (2, 1280, 1280, "1/32"), 5: (2, 640, 1280, "1/32"),
    6: (1, 640, 1280, "1/16"), 7: (1, 640, 640, "1/16"), 8: (1, 320, 640, "1/16"),
    9: (0, 320, 640, "1/8"), 10: (0, 320, 320, "1/8"), 11: (0, 320, 320, "1/8"),
}
SD1_IN_LAYERS = [2560, 2560, 2560, 2560, 2560, 1920, 1920, 1280, 960, 960, 640, 640]
SDXL_TABLE = {
    0: (2, 1280, 1280, "1/32"), 1: (2, 1280, 1280, "1/32"), 2: (2, 640, 1280, "1/32"),
    3: (1, 640, 1280, "1/16"), 4: (1, 640, 640, "1/16"), 5: (1, 320, 640, "1/16"),
    6: (0, 320, 640, "1/8"), 7: (0, 320, 320, "1/8"), 8: (0, 320, 320, "1/8"),
}
SDXL_IN_LAYERS = [2560, 2560, 1920, 1920, 1280, 960, 960, 640, 640]


def _configs():
    from unet_lab.unet_core.unet_config import SD1_CONFIG, SD2_CONFIG, SDXL_CONFIG

    return {"sd1": (SD1_CONFIG, SD1_TABLE, SD1_IN_LAYERS), "sd2": (SD2_CONFIG, SD1_TABLE, SD1_IN_LAYERS),
            "sdxl": (SDXL_CONFIG, SDXL_TABLE, SDXL_IN_LAYERS)}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_levels_match_the_real_tables(family):
    from unet_lab.unet_core.gates.levels import skip_blocks

    config, table, in_layers = _configs()[family]
    blocks = skip_blocks(config)
    assert [b.block_id for b in blocks] == list(range(len(table)))
    for b in blocks:
        level, skip, gating, factor = table[b.block_id]
        assert (b.level, b.skip_channels, b.gating_channels, b.image_factor) == (level, skip, gating, Fraction(factor))
        assert b.skip_channels + b.gating_channels == in_layers[b.block_id]
        assert b.downscale == 2 ** level


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_selection_by_index_and_factor(family):
    from unet_lab.unet_core.gates.levels import parse_levels

    config, table, _ = _configs()[family]
    n = len(config.block_out_channels)
    assert parse_levels("all", config) == tuple(range(n))
    assert parse_levels("1/8, 1/16", config) == (0, 1)
    assert parse_levels("0, L2", config) == (0, 2)
    deepest = f"1/{8 * 2 ** (n - 1)}"
    assert parse_levels(deepest, config) == (n - 1,)


def test_level_strengths_named_and_positional():
    from unet_lab.unet_core.gates.levels import parse_level_strengths
    from unet_lab.unet_core.unet_config import SD1_CONFIG, SDXL_CONFIG

    assert parse_level_strengths("", SD1_CONFIG) == (1.0, 1.0, 1.0, 1.0)
    assert parse_level_strengths("1/16=0.5, 3=0.2", SD1_CONFIG) == (1.0, 0.5, 1.0, 0.2)
    assert parse_level_strengths("0.1, 0.2, 0.3", SDXL_CONFIG) == (0.1, 0.2, 0.3)


def test_settings_give_each_output_block_its_level_strength():
    from unet_lab.unet_core.gates.skip_gate import build_settings
    from unet_lab.unet_core.unet_config import SDXL_CONFIG

    settings = build_settings(SDXL_CONFIG, 0.8, levels="1/8, 1/32", level_strengths="1/32=0.5")
    # levels 0 (blocks 6-8) at 0.8 and 2 (blocks 0-2) at 0.4; level 1 (blocks 3-5) not chosen
    assert settings.coefficients == pytest.approx({0: 0.4, 1: 0.4, 2: 0.4, 6: 0.8, 7: 0.8, 8: 0.8})


def test_errors_name_the_input_and_the_choices():
    from unet_lab.unet_core.errors import GateError
    from unet_lab.unet_core.gates.levels import parse_levels
    from unet_lab.unet_core.unet_config import SDXL_CONFIG

    with pytest.raises(GateError, match=r"1/64 of the image; this model has 1/8, 1/16, 1/32"):
        parse_levels("1/64", SDXL_CONFIG)
    with pytest.raises(GateError, match=r"levels 0\.\.2"):
        parse_levels("3", SDXL_CONFIG)
    with pytest.raises(GateError, match="cannot read 'middle'"):
        parse_levels("middle", SDXL_CONFIG)


@pytest.mark.parametrize("family,comfy_config", [
    ("sd1", {"model_channels": 320, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2]}),
    ("sdxl", {"model_channels": 320, "channel_mult": [1, 2, 4], "num_res_blocks": [2, 2, 2]}),
])
def test_comfyui_unet_config_dict_gives_the_same_levels(family, comfy_config):
    """ComfyUI's ``model_config.unet_config`` (model_channels x channel_mult), converted as the
    ComfyUI host's ``model_info`` converts it, gives the same levels as our config."""
    from unet_lab.unet_core.diffusion.ldm_config import config_from_ldm_unet_config
    from unet_lab.unet_core.gates.levels import skip_blocks

    config, table, _ = _configs()[family]
    converted = config_from_ldm_unet_config(comfy_config)
    got = [(b.level, b.skip_channels, b.gating_channels, b.image_factor) for b in skip_blocks(converted)]
    assert got == [(lv, s, g, Fraction(f)) for lv, s, g, f in table.values()]
    assert skip_blocks(converted) == skip_blocks(config)
