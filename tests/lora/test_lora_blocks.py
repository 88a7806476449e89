"""Block maps and block-weight specs: layouts from configs, every preset, named forms, bad input."""

from __future__ import annotations

import pytest

from unet_lab.unet_core.errors import BlockSpecError
from unet_lab.unet_core.lora.blocks import PRESETS, BlockLayout, block_of, parse_block_spec, presets_for
from unet_lab.unet_core.unet_config import SD1_CONFIG, SD2_CONFIG, SDXL_CONFIG

# sd-webui-lora-block-weight (its README and scripts): the block ids of each vector, in order.
SD1_17 = ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00"] + [f"OUT{i:02d}" for i in range(3, 12)]
SD1_26 = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
SDXL_12 = ["BASE", "IN04", "IN05", "IN07", "IN08", "M00"] + [f"OUT{i:02d}" for i in range(6)]
SDXL_20 = ["BASE"] + [f"IN{i:02d}" for i in range(9)] + ["M00"] + [f"OUT{i:02d}" for i in range(9)]

SD = BlockLayout.from_config(SD1_CONFIG)
XL = BlockLayout.from_config(SDXL_CONFIG)


def test_layouts_match_the_published_vectors():
    assert SD.short == SD1_17 and SD.full == SD1_26
    assert BlockLayout.from_config(SD2_CONFIG).full == SD1_26
    assert XL.short == SDXL_12 and XL.full == SDXL_20


@pytest.mark.parametrize("key, block", [
    ("input_blocks.0.0.weight", "IN00"), ("input_blocks.4.1.proj_in.weight", "IN04"),
    ("diffusion_model.input_blocks.11.0.in_layers.2.weight", "IN11"), ("middle_block.1.proj_out.weight", "M00"),
    ("output_blocks.8.2.conv.weight", "OUT08"), ("time_embed.0.weight", "BASE"), ("label_emb.0.0.weight", "BASE"),
    ("out.2.weight", "BASE"),
])
def test_block_of(key, block):
    assert block_of(key) == block


def _expected_from_vector(layout_ids, values, full_ids):
    weights = dict.fromkeys(full_ids, 1.0)
    weights.update(zip(layout_ids, values, strict=False))
    return weights


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset(name):
    values = [float(v) for v in PRESETS[name].split(",")]
    if name.startswith("SDXL-"):
        layout, ids, other = XL, SDXL_12, SD
    else:
        layout, ids, other = SD, SD1_17, XL
    assert len(values) == len(ids)
    got = parse_block_spec("", layout, preset=name)
    assert got == _expected_from_vector(ids, values, layout.full)
    assert name in presets_for(layout)
    with pytest.raises(BlockSpecError):
        parse_block_spec("", other, preset=name)


def test_named_presets_mean_what_they_say():
    outall = parse_block_spec("", SD, preset="SD-OUTALL")
    assert outall["BASE"] == 1 and outall["M00"] == 0 and outall["IN04"] == 0
    assert all(outall[f"OUT{i:02d}"] == 1 for i in range(3, 12))
    assert parse_block_spec("", XL, preset="SDXL-MIDALL")["M00"] == 1
    assert parse_block_spec("", XL, preset="SDXL-MIDALL")["OUT02"] == 0


def test_positional_vectors_full_and_short():
    full = [i / 100 for i in range(26)]
    got = parse_block_spec(",".join(map(str, full)), SD)
    assert got == dict(zip(SD1_26, full, strict=True))
    short = [0.5] * 12
    got = parse_block_spec(" ".join(map(str, short)), XL)
    assert all(got[b] == 0.5 for b in SDXL_12)
    assert got["IN00"] == got["OUT08"] == 1.0          # blocks outside the short vector stay at 1


def test_named_form():
    got = parse_block_spec("default=1, IN04=0.5, OUT03-05=0.2, M00=0", SD)
    assert got["IN04"] == 0.5 and got["M00"] == 0 and got["IN05"] == 1
    assert [got[f"OUT{i:02d}"] for i in range(2, 7)] == [1, 0.2, 0.2, 0.2, 1]
    got = parse_block_spec("default=0.3\nIN=0\nOUT=0.7  # outputs\nMID=2\nIN08=1\nOUT06-OUT07=0.1", XL)
    assert got["BASE"] == 0.3 and got["IN00"] == 0 and got["IN08"] == 1 and got["M00"] == 2
    assert got["OUT05"] == 0.7 and got["OUT06"] == got["OUT07"] == 0.1


def test_named_form_overrides_a_preset():
    got = parse_block_spec("OUT03=0.25", SD, preset="SD-NONE")
    assert got["OUT03"] == 0.25 and got["OUT04"] == 0 and got["IN00"] == 1   # IN00 outside the 17-vector


@pytest.mark.parametrize("spec, fragment", [
    ("IN04=abc", "not a number"),
    ("IN04=0.5, IN12=1", "unknown block 'IN12'"),
    ("FOO=1", "unknown block 'FOO'"),
    ("IN04=0.5, IN04=1", "named twice"),
    ("OUT03-05=1, OUT04=0", "named twice"),
    ("OUT05-03=1", "runs backwards"),
    ("IN03-OUT05=1", "within IN"),
    ("default=1, default=2", "twice"),
    ("IN=1, IN=0", "twice"),
    ("1,2,x", "not a number"),
    ("IN04=nan", "finite"),
    ("IN04 0.5, OUT=1", "neither"),
])
def test_malformed_specs(spec, fragment):
    with pytest.raises(BlockSpecError, match=fragment.replace("(", r"\(")):
        parse_block_spec(spec, SD)


def test_wrong_length_lists_the_lengths_that_fit():
    with pytest.raises(BlockSpecError) as err:
        parse_block_spec(",".join(["1"] * 17), XL)
    assert "12 values" in str(err.value) and "20 values" in str(err.value) and "17" in str(err.value)
    with pytest.raises(BlockSpecError) as err:
        parse_block_spec(",".join(["1"] * 20), SD)
    assert "17 values" in str(err.value) and "26 values" in str(err.value)


def test_unknown_preset():
    with pytest.raises(BlockSpecError, match="unknown block-weight preset"):
        parse_block_spec("", SD, preset="SD-NOPE")
