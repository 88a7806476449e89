"""The LoRA nodes on the standalone host: file from the loras folder, report, clone, bake."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fixtures_lora import make_lora, make_model, model_maps
from pack_support import node_result
from unet_lab.unet_core.errors import BlockSpecError
from unet_lab.unet_core.lora.blocks import block_of


@pytest.fixture
def setup(standalone_host):
    model = make_model("sdxl", seed=3)
    shapes, l2d = model_maps(model)
    state, expected = make_lora(shapes, l2d, "kohya_ldm", seed=5)
    state["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(8, 4)
    state["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(4, 8)
    folder = standalone_host.models_root / "loras" / "styles"
    folder.mkdir(parents=True)
    save_file(state, str(folder / "xl_style.safetensors"))
    return standalone_host, model, expected


@pytest.mark.slow
def test_apply_node_lists_file_patches_clone_and_reports(setup):
    from unet_lab.nodes.lora import UNetLabApplyLoRABlockWeights

    host, model, expected = setup
    inputs = UNetLabApplyLoRABlockWeights.INPUT_TYPES()["required"]
    assert "styles/xl_style.safetensors" in inputs["lora_name"][0]
    assert "SDXL-OUTALL" in inputs["preset"][0]
    before = {k: v.clone() for k, v in model.diffusion_model.state_dict().items()}

    patched, report = node_result(UNetLabApplyLoRABlockWeights().apply(model, "styles/xl_style.safetensors", 0.5,
                                                                        "SDXL-OUTALL", "OUT04=0.25"))
    assert patched is not model and not model.patches
    for k, v in model.diffusion_model.state_dict().items():
        assert torch.equal(v, before[k])
    baked = patched.baked_state_dict()
    # SDXL-OUTALL: BASE 1, IN04-IN08 0, M00 0, OUT00-OUT05 1; blocks outside the 12-vector stay at 1.
    weights = {"IN04": 0, "IN05": 0, "IN07": 0, "IN08": 0, "M00": 0, "OUT04": 0.25}
    for key, delta in expected.items():
        w = 0.5 * weights.get(block_of(key), 1.0)
        assert torch.allclose(baked[key], before[key] + w * delta, atol=1e-5), key
    assert "OUT04" in report and "weight 0.125" in report
    assert "M00" in report and "skipped (weight 0)" in report
    assert "text encoder: 2 keys" in report and "unmatched: none" in report


@pytest.mark.slow
def test_bake_node_returns_a_model_with_merged_weights(setup):
    from unet_lab.nodes.lora import UNetLabApplyLoRABlockWeights, UNetLabBakeLoRA

    host, model, expected = setup
    before = {k: v.clone() for k, v in model.diffusion_model.state_dict().items()}
    baked_model, report = node_result(UNetLabBakeLoRA().bake(model, "styles/xl_style.safetensors", 1.0,
                                                             "none (use block spec)", ""))
    assert not baked_model.patches and baked_model.model is not model.model
    weights = baked_model.diffusion_model.state_dict()
    for key, delta in expected.items():
        assert torch.allclose(weights[key], before[key] + delta, atol=1e-5), key
    for k, v in model.diffusion_model.state_dict().items():
        assert torch.equal(v, before[k])
    assert "baked" in report
    cfg = model.config
    x = torch.randn(1, cfg.in_channels, 16, 16)
    ctx = torch.randn(1, 3, cfg.cross_attention_dim)
    y = torch.randn(1, cfg.projection_class_embeddings_input_dim)
    t = torch.tensor([10.0])
    patched, _ = node_result(UNetLabApplyLoRABlockWeights().apply(
        model, "styles/xl_style.safetensors", 1.0, "none (use block spec)", ""))
    assert torch.allclose(baked_model.apply_model(x, t, ctx, y=y), patched.apply_model(x, t, ctx, y=y), atol=1e-4)


def test_wrong_vector_length_in_node(setup):
    from unet_lab.nodes.lora import UNetLabApplyLoRABlockWeights

    host, model, _ = setup
    with pytest.raises(BlockSpecError, match="12 values .* or 20 values"):
        UNetLabApplyLoRABlockWeights().apply(model, "styles/xl_style.safetensors", 1.0, "SD-ALL", "")
