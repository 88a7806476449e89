"""Trained skip-gate files: format, checks, and the gate math on loaded weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fixtures_gates import reference_additive_alpha, reference_applied, tiny_config


def _random_gates(config, keys, norm=None, seed=0):
    from unet_lab.unet_core.gates.additive import AdditiveAttentionGate
    from unet_lab.unet_core.gates.levels import skip_blocks

    torch.manual_seed(seed)
    blocks = {b.key: b for b in skip_blocks(config)}
    gates = {}
    for key in keys:
        b = blocks[key]
        gate = AdditiveAttentionGate(b.skip_channels, b.gating_channels, 8, norm=norm)
        with torch.no_grad():
            for p in gate.parameters():
                p.normal_(0, 0.5)
            for m in gate.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.3)
                    m.running_var.uniform_(0.5, 2.0)
        gates[key] = gate
    return gates


def _features(block, batch=2, size=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, block.gating_channels, size, size, generator=gen),
            torch.randn(batch, block.skip_channels, size, size, generator=gen))


def test_file_layout_is_the_documented_one(tmp_path):
    from unet_lab.unet_core.gates.trained import save_trained_gates

    config = tiny_config("sd1")
    path = save_trained_gates(tmp_path / "g.safetensors", _random_gates(config, ["level3.0", "level0.1"]), "sd1", config)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
        assert tuple(f.get_tensor("level3.0.W_g.0.weight").shape) == (8, 64, 1, 1)
    assert "level3.0.W_g.0.weight" in keys and "level0.1.psi.0.bias" in keys and "level0.1.W_x.0.weight" in keys
    assert meta["format"] == "unet_lab.skip_gates" and meta["family"] == "sd1" and meta["norm"] == "none"
    assert json.loads(meta["block_out_channels"]) == [32, 64, 64, 64] and meta["layers_per_block"] == "1"
    # tiny SD1 (L=1): level3.0 is output block 0 (skip 64, h 64); level0.1 is block 7 (skip conv_in 32, h 32)
    assert json.loads(meta["channels"]) == {"level3.0": [64, 64, 8], "level0.1": [32, 32, 8]}
    with pytest.raises(Exception, match="exists"):
        save_trained_gates(path, {}, "sd1", config)


@pytest.mark.parametrize("norm", [None, "batch"])
def test_loaded_gate_applies_the_math(tmp_path, norm):
    from unet_lab.unet_core.gates.levels import skip_blocks
    from unet_lab.unet_core.gates.skip_gate import SkipGatePatch, build_settings
    from unet_lab.unet_core.gates.trained import load_trained_gates, save_trained_gates

    config = tiny_config("sd1")
    gates = _random_gates(config, ["level1.1"], norm=torch.nn.BatchNorm2d if norm else None)
    state = {k: v.clone() for k, v in gates["level1.1"].state_dict().items()}
    path = save_trained_gates(tmp_path / "g.safetensors", gates, "sd1", config, norm=norm or "none")
    trained = load_trained_gates(path, config, "sd1")
    block = next(b for b in skip_blocks(config) if b.key == "level1.1")
    assert trained.block_ids() == {block.block_id}
    h, hsp = _features(block)

    if norm is None:
        alpha = reference_additive_alpha(state, h, hsp)
    else:  # eval-mode batch norm after each 1x1 conv, written out
        def bn(y, prefix):
            rm, rv = state[f"{prefix}.1.running_mean"].double(), state[f"{prefix}.1.running_var"].double()
            w, b = state[f"{prefix}.1.weight"].double(), state[f"{prefix}.1.bias"].double()
            return (y - rm[None, :, None, None]) / torch.sqrt(rv[None, :, None, None] + 1e-5) * w[None, :, None, None] + b[None, :, None, None]

        def conv(x, prefix):
            y = torch.einsum("oc,bchw->bohw", state[f"{prefix}.0.weight"].double()[:, :, 0, 0], x.double())
            if f"{prefix}.0.bias" in state:
                y = y + state[f"{prefix}.0.bias"].double()[None, :, None, None]
            return bn(y, prefix)

        alpha = torch.sigmoid(conv(torch.relu(conv(h, "W_g") + conv(hsp, "W_x")), "psi"))

    settings = build_settings(config, 0.6, floor=0.25)
    patch = SkipGatePatch(settings, trained=trained)
    _, out = patch(h, hsp, {"block": ("output", block.block_id)})
    expected = hsp.double() * reference_applied(alpha, 0.6, 0.25)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    # a block with no trained gate in the file is left alone
    other = next(b for b in skip_blocks(config) if b.block_id != block.block_id)
    h2, hsp2 = _features(other)
    assert patch(h2, hsp2, {"block": ("output", other.block_id)})[1] is hsp2


def test_strength_one_floor_zero_equals_the_gate_module(tmp_path):
    """At strength 1 and floor 0 the patch is exactly AdditiveAttentionGate.forward's alpha * x."""
    from unet_lab.unet_core.gates.levels import skip_blocks
    from unet_lab.unet_core.gates.skip_gate import SkipGatePatch, build_settings
    from unet_lab.unet_core.gates.trained import load_trained_gates, save_trained_gates

    config = tiny_config("sdxl")
    gates = _random_gates(config, ["level0.0"])
    path = save_trained_gates(tmp_path / "g.safetensors", gates, "sdxl", config)
    block = next(b for b in skip_blocks(config) if b.key == "level0.0")
    h, hsp = _features(block)
    patch = SkipGatePatch(build_settings(config, 1.0), trained=load_trained_gates(path, config, "sdxl"))
    expected, _ = gates["level0.0"].eval()(hsp, h)
    torch.testing.assert_close(patch(h, hsp, {"block": ("output", block.block_id)})[1], expected.detach())


def test_wrong_shapes_give_a_clear_gate_error(tmp_path):
    from unet_lab.unet_core.errors import GateError
    from unet_lab.unet_core.gates.trained import load_trained_gates, save_trained_gates

    config = tiny_config("sd1")
    path = save_trained_gates(tmp_path / "g.safetensors", _random_gates(config, ["level3.0"]), "sd1", config)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["level3.0.W_x.0.weight"] = torch.zeros(8, 48, 1, 1)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(GateError, match=r"bad\.safetensors: level3\.0\.W_x\.0\.weight has shape \[8, 48, 1, 1\], "
                                        r"expected \[8, 64, 1, 1\]"):
        load_trained_gates(bad, config, "sd1")
    # a file made for another config of the same family
    with pytest.raises(GateError, match="block_out_channels"):
        load_trained_gates(path, tiny_config("sd1").with_(block_out_channels=(32, 64, 64, 128)), "sd1")
    # a key naming a block the model lacks
    tensors = {k.replace("level3.0", "level7.0"): v for k, v in tensors.items() if k.startswith("level3.0")}
    save_file(tensors, str(tmp_path / "bad2.safetensors"), metadata=meta)
    with pytest.raises(GateError, match="level7.0 is not an output block"):
        load_trained_gates(tmp_path / "bad2.safetensors", config, "sd1")


def test_other_family_and_foreign_files_are_refused(tmp_path):
    from unet_lab.unet_core.errors import GateError
    from unet_lab.unet_core.gates.trained import load_trained_gates, save_trained_gates

    config = tiny_config("sd1")
    path = save_trained_gates(tmp_path / "g.safetensors", _random_gates(config, ["level3.0"]), "sd2", config)
    with pytest.raises(GateError, match="g.safetensors: gates were trained for sd2, but the model is sd1"):
        load_trained_gates(path, config, "sd1")
    assert load_trained_gates(path, config, "sd2_inpaint").block_ids() == {0}  # inpaint: same skips
    save_file({"x": torch.zeros(1)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(GateError, match="lora.safetensors: metadata format is None"):
        load_trained_gates(tmp_path / "lora.safetensors", config, "sd1")
    (tmp_path / "broken.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(GateError, match="broken.safetensors: not a readable safetensors file"):
        load_trained_gates(tmp_path / "broken.safetensors", config, "sd1")
