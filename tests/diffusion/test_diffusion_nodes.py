"""Load / Inspect / Swap / Save UNet nodes through the standalone host, on tiny real-layout files."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open

from fixtures_diffusion import TINY_SD1, TINY_SDXL, diffusers_twin, sdxl_inputs, write_tiny_unet
from pack_support import node_result
from unet_lab.nodes.diffusion import (
    NODE_CLASS_MAPPINGS,
    UNetLabInspectUNet,
    UNetLabLoadUNet,
    UNetLabSaveUNet,
    UNetLabSwapUNet,
)
from unet_lab.unet_core.diffusion.embeddings import sdxl_adm_embedding
from unet_lab.unet_core.diffusion.swap import check_swap
from unet_lab.unet_core.diffusion.unet import UNetModel
from unet_lab.unet_core.errors import FamilyMismatchError, InputError
from unet_lab.unet_core.unet_config import SD1_CONFIG, SDXL_CONFIG

KEY = "input_blocks.4.1.transformer_blocks.0.attn1.to_v.weight"


def _inputs(config=TINY_SD1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, config.in_channels, 16, 16, generator=gen)
    t = torch.tensor([20.0, 600.0])
    ctx = torch.randn(2, 5, config.cross_attention_dim, generator=gen)
    return x, t, ctx


def _reference_out(sd, config=TINY_SD1, seed=0):
    model = UNetModel(config)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    with torch.no_grad():
        return model.eval()(*_inputs(config, seed))


def _load(name, dtype="default", prediction="auto"):
    return node_result(UNetLabLoadUNet().load(name, dtype, prediction))


def test_nodes_are_registered_with_comfy_metadata():
    assert set(NODE_CLASS_MAPPINGS) == {"UNetLabLoadUNet", "UNetLabInspectUNet", "UNetLabSwapUNet", "UNetLabSaveUNet"}
    for cls in NODE_CLASS_MAPPINGS.values():
        assert cls.CATEGORY == "UNet Lab/diffusion"


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["ldm", "ldm_prefixed"])
def test_load_unet_ldm_layouts(standalone_host, layout):
    _, sd = write_tiny_unet(standalone_host.models_root, f"tiny_{layout}.safetensors", TINY_SD1, seed=1, layout=layout)
    assert UNetLabLoadUNet.INPUT_TYPES()["required"]["unet_name"][0] == [f"tiny_{layout}.safetensors"]
    model, info = _load(f"tiny_{layout}.safetensors")
    assert f"layout: {layout}" in info
    with torch.no_grad():
        out = model.apply_model(*_inputs())
    torch.testing.assert_close(out, _reference_out(sd), atol=0, rtol=0)
    details = standalone_host.model_info(model)
    assert details["config"] == TINY_SD1 and details["weight_dtype"] == torch.float32


@pytest.mark.slow
def test_load_unet_diffusers_file_runs_like_diffusers(standalone_host):
    """A file holding diffusers' own state dict, loaded by the node, predicts what diffusers predicts."""
    write_tiny_unet(standalone_host.models_root, "tiny_xl_diffusers.safetensors", TINY_SDXL, seed=4,
                    layout="diffusers")
    model, info = _load("tiny_xl_diffusers.safetensors")
    assert "layout: diffusers" in info
    twin = diffusers_twin(TINY_SDXL, seed=4)
    x, t, ctx = _inputs(TINY_SDXL)
    te, ti = sdxl_inputs(2)
    with torch.no_grad():
        ref = twin(x, t, ctx, added_cond_kwargs={"text_embeds": te, "time_ids": ti}).sample
        out = model.apply_model(x, t, ctx, y=sdxl_adm_embedding(te, ti, TINY_SDXL.addition_time_embed_dim))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_load_unet_dtype_and_prediction_choices(standalone_host):
    write_tiny_unet(standalone_host.models_root, "tiny.safetensors", TINY_SD1, seed=2)
    model, info = _load("tiny.safetensors", "fp8_e4m3fn", "v_prediction")
    details = standalone_host.model_info(model)
    assert details["weight_dtype"] == torch.float8_e4m3fn and details["compute_dtype"] == torch.float32
    assert details["prediction"] == "v_prediction" and model.model.prediction == "v_prediction"
    assert "fp8_e4m3fn" in info and "v-prediction" in info
    with torch.no_grad():
        assert torch.isfinite(model.apply_model(*_inputs())).all()
    fp16, _ = _load("tiny.safetensors", "fp16")
    assert standalone_host.model_info(fp16)["weight_dtype"] == torch.float16


def test_load_unet_bad_file_is_a_clear_error(standalone_host):
    path = standalone_host.models_root / "diffusion_models" / "broken.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    from unet_lab.unet_core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="broken.safetensors"):
        _load("broken.safetensors")


def test_inspect_unet_reports_on_the_node(standalone_host):
    write_tiny_unet(standalone_host.models_root, "a.safetensors", TINY_SD1, seed=1, layout="ldm_prefixed")
    files = UNetLabInspectUNet.INPUT_TYPES()["required"]["file"][0]
    assert files == ["diffusion_models/a.safetensors"]
    result = UNetLabInspectUNet().inspect("diffusion_models/a.safetensors")
    report = result["result"][0]
    assert result["ui"]["text"] == [report]
    assert "a.safetensors" in report and "ldm_prefixed" in report and "UNet only" in report
    with pytest.raises(InputError):
        UNetLabInspectUNet().inspect("loras/a.safetensors")


@pytest.mark.slow
def test_swap_unet_takes_the_file_weights_and_keeps_patches(standalone_host):
    root = standalone_host.models_root
    write_tiny_unet(root, "a.safetensors", TINY_SD1, seed=1)
    _, sd_b = write_tiny_unet(root, "b.safetensors", TINY_SD1, seed=2)
    model_a, _ = _load("a.safetensors")
    with torch.no_grad():
        before = model_a.apply_model(*_inputs())
    weights_before = {k: v.clone() for k, v in model_a.diffusion_model.state_dict().items()}

    # a patched pipeline: a weight diff and an output-block patch on a clone of A
    delta = torch.randn(64, 64, generator=torch.Generator().manual_seed(9)) * 0.1
    patched = model_a.clone()
    patched.add_patches({"diffusion_model." + KEY: ("diff", (delta,))}, 0.5)
    patched.set_model_output_block_patch(lambda h, hsp, o: (h * 1.5, hsp) if o["block"] == ("output", 4) else (h, hsp))

    swapped, info = UNetLabSwapUNet().swap(patched, "b.safetensors")
    assert "b.safetensors" in info

    # reference: B's weights with the diff merged, and the same output-block patch applied by a hook
    ref_sd = dict(sd_b)
    ref_sd[KEY] = sd_b[KEY] + 0.5 * delta
    ref = UNetModel(TINY_SD1)
    ref.load_state_dict(ref_sd)
    ref.eval()
    handle = ref.output_blocks[3].register_forward_hook(lambda m, i, out: out * 1.5)
    with torch.no_grad():
        expected = ref(*_inputs())
        got = swapped.apply_model(*_inputs())
        plain_swap = UNetLabSwapUNet().swap(model_a, "b.safetensors")[0].apply_model(*_inputs())
        after = model_a.apply_model(*_inputs())
    handle.remove()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain_swap, _reference_out(sd_b), atol=1e-6, rtol=1e-6)
    assert torch.equal(after, before)  # the input MODEL is untouched, bitwise
    for k, v in model_a.diffusion_model.state_dict().items():
        assert torch.equal(v, weights_before[k])
    assert list(patched.patches) == ["diffusion_model." + KEY]


def test_swap_unet_refuses_another_family(standalone_host):
    write_tiny_unet(standalone_host.models_root, "a.safetensors", TINY_SD1, seed=1)
    write_tiny_unet(standalone_host.models_root, "xl.safetensors", TINY_SDXL, seed=1)
    model_a, _ = _load("a.safetensors")
    with pytest.raises(FamilyMismatchError, match="xl.safetensors") as err:
        UNetLabSwapUNet().swap(model_a, "xl.safetensors")
    assert "context 48" in str(err.value) and "context 64" in str(err.value)
    with pytest.raises(FamilyMismatchError, match="the model is sd1 but the file is sdxl"):
        check_swap("sd1", SD1_CONFIG, "sdxl", SDXL_CONFIG, "x.safetensors")
    with pytest.raises(FamilyMismatchError, match="sd1 but the file is sd1_inpaint"):
        check_swap("sd1", SD1_CONFIG, "sd1_inpaint", SD1_CONFIG.with_(in_channels=9))
    check_swap("sd1", SD1_CONFIG, "sd1", SD1_CONFIG)  # same family: fine


def _file_tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("layout", ["ldm", "ldm_prefixed", "diffusers"])
def test_save_unet_round_trips_with_patches_baked(standalone_host, layout):
    from unet_lab.unet_core.checkpoints.loader import load_unet
    from unet_lab.unet_core.checkpoints.sniff import sniff

    _, sd = write_tiny_unet(standalone_host.models_root, "src.safetensors", TINY_SD1, seed=3)
    model, _ = _load("src.safetensors")
    delta = torch.full((64, 64), 0.25)
    patched = model.clone()
    patched.add_patches({"diffusion_model." + KEY: ("diff", (delta,))}, 2.0, 1.0)
    out = UNetLabSaveUNet().save(patched, "tests/baked", layout, "keep")
    path = out["result"][0]
    assert out["ui"]["text"] == [path]
    assert os.path.basename(path) == "baked_00001_.safetensors"
    assert os.path.dirname(path) == str(standalone_host.models_root / "diffusion_models" / "tests")
    tensors, metadata = _file_tensors(path)
    if layout == "diffusers":  # the names diffusers itself uses
        assert set(tensors) == set(diffusers_twin(TINY_SD1).state_dict())
    elif layout == "ldm_prefixed":
        assert all(k.startswith("model.diffusion_model.") for k in tensors)
    else:
        assert set(tensors) == set(sd)
    assert metadata["modelspec.sai_model_spec"] and "prediction" in " ".join(metadata)
    spec = sniff(path)
    assert spec.layout == layout and spec.config == TINY_SD1
    loaded, _ = load_unet(path)
    expected = dict(sd)
    expected[KEY] = sd[KEY] + 2.0 * delta
    assert set(loaded) == set(expected)
    for k in expected:
        torch.testing.assert_close(loaded[k], expected[k], atol=0, rtol=0, msg=k)
    # the model that was saved is untouched
    assert torch.equal(model.diffusion_model.state_dict()[KEY], sd[KEY])


def test_save_unet_numbers_files_never_overwrites_and_casts(standalone_host):
    write_tiny_unet(standalone_host.models_root, "src.safetensors", TINY_SD1, seed=3)
    model, _ = _load("src.safetensors")
    first = UNetLabSaveUNet().save(model, "UNet", "ldm", "keep")["result"][0]
    stamp = os.stat(first).st_mtime_ns, open(first, "rb").read()
    second = UNetLabSaveUNet().save(model, "UNet", "ldm", "fp16")["result"][0]
    assert os.path.basename(first) == "UNet_00001_.safetensors"
    assert os.path.basename(second) == "UNet_00002_.safetensors"
    assert (os.stat(first).st_mtime_ns, open(first, "rb").read()) == stamp
    tensors, _ = _file_tensors(second)
    assert {v.dtype for v in tensors.values()} == {torch.float16}
    fp8 = UNetLabSaveUNet().save(model, "UNet", "ldm", "fp8_e4m3fn")["result"][0]
    assert {v.dtype for v in _file_tensors(fp8)[0].values()} == {torch.float8_e4m3fn}
    for bad in ("../escape", "/abs/path", "a/../../b", ""):
        with pytest.raises(InputError):
            UNetLabSaveUNet().save(model, bad, "ldm", "keep")
