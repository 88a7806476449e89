"""Regression cases the checkpoint and segmentation fuzzing found (fixed; see the hardening report).

Each case was an undocumented exception (AttributeError, TypeError, ValueError,
ZeroDivisionError, RuntimeError, SafetensorError) escaping a public loader.
"""

from __future__ import annotations

import json

import pytest
import torch

from fixtures_hardening import (
    join_safetensors,
    load_unet_node,
    make_host,
    split_safetensors,
    tiny_milesial_state_dict,
    tiny_seg_model,
    tiny_unet_config,
    tiny_unet_state_dict,
)


@pytest.mark.parametrize("change", [None, 3, "text", [1, 2], {"num_attention_heads": "ab"},
                                    {"num_attention_heads": [3, 3]}, {"num_attention_heads": [0, 0]},
                                    {"num_attention_heads": [-2, -2]}, {"norm_num_groups": 7},
                                    {"norm_num_groups": 0}, {"norm_num_groups": True}])
def test_unusable_stored_config_falls_back_to_shapes(tmp_path, change):
    """A stored config (metadata unet_lab.config) that cannot build a model is ignored with a note."""
    from unet_lab.nodes.host import use_host
    from unet_lab.unet_core.checkpoints.writer import save_unet

    config = tiny_unet_config()
    if isinstance(change, dict):
        stored = {**config.to_dict(), **change}
    else:
        stored = change
    path = tmp_path / "models" / "diffusion_models" / "u.safetensors"
    save_unet(path, tiny_unet_state_dict(config), config, metadata={"unet_lab.config": json.dumps(stored)})
    with use_host(make_host(tmp_path)):
        model, info = load_unet_node("u.safetensors")
    assert "stored config" in info and "shapes used" in info, info
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        out = model.apply_model(x, torch.tensor([10.0]), torch.randn(1, 2, config.cross_attention_dim))
    assert out.shape == x.shape and torch.isfinite(out).all()


def _our_seg_file(tmp_path, **meta):
    from unet_lab.unet_core.segmentation.checkpoint import SegmentationMeta, save_segmentation

    model = tiny_seg_model()
    path = save_segmentation(tmp_path / "s.safetensors", model, SegmentationMeta.for_model(model))
    header, data = split_safetensors(path.read_bytes())
    header["__metadata__"].update(meta)
    path.write_bytes(join_safetensors(header, data))
    return path


@pytest.mark.parametrize("field,value", [("threshold", "null"), ("threshold", "[1]"), ("class_names", "null"),
                                         ("class_names", "3"), ("normalization", "null"), ("normalization", "5"),
                                         ("normalization", '{"mean": "x"}'),
                                         ("normalization", '{"mean": [0, 0], "std": [1, 1, 1]}')])
def test_segmentation_header_fields_of_wrong_type(tmp_path, field, value):
    from unet_lab.unet_core.errors import SegmentationError
    from unet_lab.unet_core.segmentation.checkpoint import load_segmentation

    path = _our_seg_file(tmp_path, **{field: value})
    with pytest.raises(SegmentationError, match=field if field != "threshold" and field != "class_names" else "wrong type"):
        load_segmentation(path)


def test_segmentation_good_normalization_still_loads(tmp_path):
    from unet_lab.unet_core.segmentation.checkpoint import load_segmentation

    path = _our_seg_file(tmp_path, normalization='{"scale": "0..1", "mean": [0.5], "std": [0.25, 0.25, 0.25]}')
    model, meta = load_segmentation(path)
    x = torch.full((1, 3, 4, 4), 0.75)
    assert torch.allclose(meta.normalize(x), torch.ones_like(x))  # (0.75 - 0.5) / 0.25


@pytest.mark.parametrize("mask_values", [False, 3, None, 2.5])
def test_milesial_scalar_mask_values_are_ignored(tmp_path, mask_values):
    from unet_lab.unet_core.segmentation.checkpoint import load_segmentation

    torch.save({**tiny_milesial_state_dict(), "mask_values": mask_values}, str(tmp_path / "m.pth"))
    model, meta = load_segmentation(tmp_path / "m.pth")
    assert meta.source == "milesial" and meta.class_values is None


def test_segmentation_pickle_branch_with_safetensors_content(tmp_path):
    """A file whose first byte is 0x80 but is a (broken) safetensors file: torch.load raised SafetensorError."""
    from unet_lab.unet_core.errors import SegmentationError
    from unet_lab.unet_core.segmentation.checkpoint import load_segmentation

    header = [None, [None, None, -1], [None, 1.6e16, -1.7e308, 1.3e154]]
    path = tmp_path / "x.pth"
    # force the 0x80 first byte the fuzzer hit: a header length of 128 + 256k
    text = json.dumps(header).encode()
    text += b" " * (128 - len(text) % 256) if len(text) % 256 <= 128 else b" " * (384 - len(text) % 256)
    path.write_bytes(len(text).to_bytes(8, "little") + text)
    assert path.read_bytes()[:1] == b"\x80"
    with pytest.raises(SegmentationError):
        load_segmentation(path)


def test_null_stored_config_in_sniff(tmp_path):
    from unet_lab.unet_core.checkpoints.sniff import sniff
    from unet_lab.unet_core.checkpoints.writer import save_unet

    path = save_unet(tmp_path / "u.safetensors", tiny_unet_state_dict(), tiny_unet_config(),
                     metadata={"unet_lab.config": "null"})
    spec = sniff(path)
    assert spec.config.block_out_channels == tiny_unet_config().block_out_channels
    assert any("unreadable" in n for n in spec.notes)


@pytest.mark.parametrize("channels", ["null", '{"level1.0": 5}', '["level1.0"]'])
def test_gate_weights_with_malformed_channels_metadata(tmp_path, channels):
    from unet_lab.unet_core.errors import GateError
    from unet_lab.unet_core.gates.additive import AdditiveAttentionGate
    from unet_lab.unet_core.gates.levels import skip_blocks
    from unet_lab.unet_core.gates.trained import load_trained_gates, save_trained_gates

    config = tiny_unet_config()
    block = skip_blocks(config)[0]
    gates = {block.key: AdditiveAttentionGate(block.skip_channels, block.gating_channels, 4, norm=None)}
    path = save_trained_gates(tmp_path / "g.safetensors", gates, "sd1", config)
    header, data = split_safetensors(path.read_bytes())
    header["__metadata__"]["channels"] = channels
    path.write_bytes(join_safetensors(header, data))
    with pytest.raises(GateError):
        load_trained_gates(path, config, "sd1")
