"""Clone safety: no sequence of our patch nodes changes the MODEL it was given.

A reduced-config UNet is written with the pack's checkpoint writer and loaded with
UNetLabLoadUNet in a standalone host (so its weights are views on the file's private mapping).
Hypothesis draws sequences of node calls (Apply LoRA, Bake LoRA, Skip Attention Gate, Swap UNet,
Save UNet, a forward pass of the patched model), each applied to the original or to the last
result. Afterwards the original's weights are bitwise equal to a snapshot, its patches and
model options are as loaded, its forward output is bitwise the same, and the file is unchanged.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures_hardening import load_unet_node, make_host, node_result, tiny_unet_config, tiny_unet_state_dict
from fixtures_lora import make_lora

OPS = ("lora", "bake", "gate", "swap", "save", "forward")


def _forward(model):
    config = model.model.unet_config
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, config.in_channels, 8, 8, generator=g)
    ctx = torch.randn(1, 3, config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return model.apply_model(x, torch.tensor([500.0]), ctx)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from safetensors.torch import save_file

    from unet_lab.nodes.host import use_host
    from unet_lab.unet_core.checkpoints.keymap import diffusers_to_ldm_keymap
    from unet_lab.unet_core.checkpoints.writer import save_unet

    base = tmp_path_factory.mktemp("clone")
    host = make_host(base)
    config = tiny_unet_config()
    dm = base / "models" / "diffusion_models"
    save_unet(dm / "a.safetensors", tiny_unet_state_dict(config, seed=0), config)
    save_unet(dm / "b.safetensors", tiny_unet_state_dict(config, seed=1), config)
    shapes = {k: tuple(v.shape) for k, v in tiny_unet_state_dict(config).items()}
    ldm_to_diffusers = {v: k for k, v in diffusers_to_ldm_keymap(config).items()}
    lora, _expected = make_lora(shapes, ldm_to_diffusers, "kohya", rank=2, limit=6)
    (base / "models" / "loras").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in lora.items()}, str(base / "models" / "loras" / "l.safetensors"))
    digest = hashlib.sha256((dm / "a.safetensors").read_bytes()).hexdigest()
    with use_host(host):
        original, _ = load_unet_node("a.safetensors")
        yield host, base, original, digest


def _apply(op, model):
    from unet_lab.nodes.diffusion import UNetLabSaveUNet, UNetLabSwapUNet
    from unet_lab.nodes.gates import UNetLabSkipAttentionGate
    from unet_lab.nodes.lora import UNetLabApplyLoRABlockWeights, UNetLabBakeLoRA
    from unet_lab.unet_core.lora.blocks import NO_PRESET

    if op == "lora":
        return node_result(UNetLabApplyLoRABlockWeights().apply(model, "l.safetensors", 0.8, NO_PRESET, "IN=0.5"))[0]
    if op == "bake":
        return node_result(UNetLabBakeLoRA().bake(model, "l.safetensors", 1.5, NO_PRESET, ""))[0]
    if op == "gate":
        return node_result(UNetLabSkipAttentionGate().patch(model, 0.7, "all", "", 0.1, "both"))[0]
    if op == "swap":
        return node_result(UNetLabSwapUNet().swap(model, "b.safetensors"))[0]
    if op == "save":
        UNetLabSaveUNet().save(model, "clone/s", "ldm", "keep")
        return model
    _forward(model)
    return model


@pytest.mark.slow
def test_clone_safety(setup):
    from unet_lab.nodes.host import use_host
    from unet_lab.unet_core.errors import UNetLabError

    host, base, original, digest = setup
    snapshot = {k: v.detach().clone() for k, v in original.diffusion_model.state_dict().items()}
    reference_out = _forward(original)
    assert original.patches == {} and original.model_options == {"transformer_options": {}}
    seen_ops: set[str] = set()

    @settings(max_examples=8, deadline=60_000, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.sampled_from(OPS), st.booleans()), min_size=1, max_size=4))
    def run(sequence):
        with use_host(host):
            current = original
            for op, from_original in sequence:
                source = original if from_original else current
                try:
                    current = _apply(op, source)
                    seen_ops.add(op)
                except UNetLabError as exc:
                    raise AssertionError(f"{op} refused a valid model: {exc}") from exc
        state = original.diffusion_model.state_dict()
        assert set(state) == set(snapshot)
        changed = [k for k, v in state.items() if not torch.equal(v, snapshot[k]) or v.dtype != snapshot[k].dtype]
        assert not changed, f"{sequence} changed the original's weights: {changed[:4]}"
        assert original.patches == {}, f"{sequence} added patches to the original"
        assert original.model_options == {"transformer_options": {}}, f"{sequence} changed the original's options"
        assert torch.equal(_forward(original), reference_out), f"{sequence} changed the original's output"

    run()
    assert seen_ops >= {"lora", "gate", "swap"}, f"the drawn sequences never exercised {set(OPS) - seen_ops}"
    assert hashlib.sha256((base / "models" / "diffusion_models" / "a.safetensors").read_bytes()).hexdigest() == digest


def test_patched_clone_really_differs(setup):
    """Control: each patch node's output does differ from the original (so 'unchanged' is not vacuous)."""
    from unet_lab.nodes.host import use_host

    host, base, original, _ = setup
    reference = _forward(original)
    with use_host(host):
        for op in ("lora", "bake", "gate", "swap"):
            out = _forward(_apply(op, original))
            assert not torch.equal(out, reference), f"{op} made no difference to the output"
