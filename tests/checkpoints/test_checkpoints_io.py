"""Reading and writing: config inference, save/load round trips, diffusers interop, pickles, safety."""

from __future__ import annotations

import json

import pytest
import torch

import fixtures_checkpoints as fx
from unet_lab.unet_core.checkpoints.infer_config import (
    config_from_diffusers_json,
    config_from_diffusers_shapes,
    config_from_ldm_shapes,
    default_heads,
)
from unet_lab.unet_core.checkpoints.keymap import convert_diffusers_to_ldm
from unet_lab.unet_core.checkpoints.loader import load_unet
from unet_lab.unet_core.checkpoints.safetensors_header import read_header
from unet_lab.unet_core.checkpoints.sniff import sniff
from unet_lab.unet_core.checkpoints.writer import architecture_for, next_free_path, save_unet
from unet_lab.unet_core.errors import CheckpointError
from unet_lab.unet_core.unet_config import SD1_CONFIG, SD2_CONFIG, SDXL_CONFIG, UNetConfig

TINY_XL = UNetConfig(block_out_channels=(32, 64, 64), transformer_layers_per_block=(0, 1, 2),
                     num_attention_heads=(1, 2, 2), cross_attention_dim=64, norm_num_groups=8,
                     use_linear_projection=True, addition_embed_type="text_time",
                     addition_time_embed_dim=8, projection_class_embeddings_input_dim=64)
TINY_1 = UNetConfig(block_out_channels=(32, 64), transformer_layers_per_block=(1, 0), layers_per_block=1,
                    num_attention_heads=(4, 4), cross_attention_dim=48, norm_num_groups=8)


def _diffusers_model(config, seed=0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    model = UNet2DConditionModel(**fx.diffusers_unet_kwargs(config))
    with torch.no_grad():  # no zero-initialised tensors: every value must survive the trip
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


def _ldm(config, seed=0):
    return convert_diffusers_to_ldm(_diffusers_model(config, seed).state_dict(), config)


# -- config inference ------------------------------------------------------------------------
@pytest.mark.parametrize("config", [SD1_CONFIG, SD2_CONFIG, SDXL_CONFIG], ids=["sd1", "sd2", "sdxl"])
def test_real_configs_from_shapes_and_from_diffusers_json(config):
    assert config_from_ldm_shapes(fx.ldm_shapes(config)) == config
    assert config_from_diffusers_shapes(fx.diffusers_shapes(config)) == config
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        diffusers_config = dict(UNet2DConditionModel(**fx.diffusers_unet_kwargs(config)).config)
    assert config_from_diffusers_json(diffusers_config) == config


@pytest.mark.parametrize("config", [TINY_XL, TINY_1, SD1_CONFIG.with_(in_channels=9)])
def test_reduced_configs_from_shapes_follow_the_documented_rules(config):
    inferred = config_from_ldm_shapes(fx.ldm_shapes(config))
    assert config_from_diffusers_shapes(fx.diffusers_shapes(config)) == inferred
    # every field the weights fix is exact ...
    for field in ("in_channels", "out_channels", "block_out_channels", "layers_per_block",
                  "transformer_layers_per_block", "cross_attention_dim", "use_linear_projection",
                  "addition_embed_type", "projection_class_embeddings_input_dim"):
        assert getattr(inferred, field) == getattr(config, field), field
    assert inferred.mid_transformer_layers == config.mid_transformer_layers
    # ... and the weightless ones follow the rules: 8 heads for conv proj, 64-channel heads for linear
    chans = config.block_out_channels
    expected_heads = tuple(8 for _ in chans) if not config.use_linear_projection else \
        tuple(c // 64 if c % 64 == 0 else 1 for c in chans)
    assert inferred.num_attention_heads == expected_heads == default_heads(chans, config.use_linear_projection)
    assert inferred.norm_num_groups == 32 and inferred.addition_time_embed_dim == 256


# -- save / load round trips -----------------------------------------------------------------
@pytest.mark.parametrize("layout", ["ldm", "ldm_prefixed", "diffusers", "diffusers_file"])
def test_save_then_load_gives_back_every_tensor_and_the_exact_config(tmp_path, layout):
    sd = _ldm(TINY_XL)
    target = tmp_path / ("out.safetensors" if layout != "diffusers" else "out_folder")
    written = save_unet(target, sd, TINY_XL, layout=layout.replace("_file", ""), prediction="epsilon")
    spec = sniff(written)
    assert spec.layout == layout.replace("_file", "")
    assert spec.config == TINY_XL  # heads, groups, time-embed width restored from the stored config
    assert spec.prediction == "epsilon" and "modelspec.prediction_type" in spec.prediction_source
    loaded, spec2 = load_unet(written)
    assert set(loaded) == set(sd)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_diffusers_reads_our_diffusers_folder(tmp_path):
    from diffusers import UNet2DConditionModel

    model = _diffusers_model(TINY_XL, seed=3)
    sd = convert_diffusers_to_ldm(model.state_dict(), TINY_XL)
    folder = save_unet(tmp_path / "unet", sd, TINY_XL, layout="diffusers")
    theirs = UNet2DConditionModel.from_pretrained(str(folder))
    ref = model.state_dict()
    got = theirs.state_dict()
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    assert theirs.config.attention_head_dim == list(TINY_XL.num_attention_heads)


def test_we_read_a_folder_written_by_diffusers(tmp_path):
    model = _diffusers_model(TINY_1, seed=5)
    model.save_pretrained(str(tmp_path / "pipe" / "unet"))
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    loaded, spec = load_unet(tmp_path / "pipe")
    assert spec.config_source == "config.json" and spec.config == TINY_1
    ref = convert_diffusers_to_ldm(model.state_dict(), TINY_1)
    assert set(loaded) == set(ref) and all(torch.equal(loaded[k], ref[k]) for k in ref)


def test_dtype_cast_on_save(tmp_path):
    sd = _ldm(TINY_1)
    p = save_unet(tmp_path / "half.safetensors", sd, TINY_1, dtype="fp16")
    header = read_header(p)
    assert {t.dtype for t in header.tensors.values()} == {"F16"}
    loaded, _ = load_unet(p)
    assert all(torch.equal(loaded[k], sd[k].half()) for k in sd)


def test_load_unet_of_a_full_checkpoint_drops_the_other_parts(tmp_path):
    from safetensors.torch import save_file

    sd = _ldm(TINY_1)
    tensors = {"model.diffusion_model." + k: v for k, v in sd.items()}
    for k in ("encoder.conv_in.weight", "decoder.conv_in.weight"):
        tensors["first_stage_model." + k] = torch.zeros(2)
    tensors["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(3)
    p = tmp_path / "full.safetensors"
    save_file(tensors, str(p))
    loaded, spec = load_unet(p)
    assert spec.kind == "full_checkpoint"
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_checkpoint_with_state_dict_wrapper(tmp_path, zip_format):
    sd = _ldm(TINY_1)
    p = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model." + k: v for k, v in sd.items()}, "global_step": 7}, p,
               _use_new_zipfile_serialization=zip_format)
    spec = sniff(p)
    assert (spec.format, spec.kind, spec.layout) == ("pickle", "unet", "ldm_prefixed")
    loaded, _ = load_unet(p)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_sd2_prediction_from_the_weights_on_a_real_shape_sparse_file(tmp_path):
    """ComfyUI's rule: std of output_blocks.11.1.transformer_blocks.0.norm1.bias > 0.09 -> v-prediction."""
    key = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
    for std, expected in ((0.0, "epsilon"), (0.2, "v_prediction")):
        p = fx.write_unet(tmp_path, "sd2", "ldm", name=f"sd21_std{std}.safetensors", dtype="F32")
        header = read_header(p)
        info = header.tensors[key]
        values = torch.randn(info.shape, generator=torch.Generator().manual_seed(0))
        values = values / values.std(unbiased=False) * std if std else torch.zeros(info.shape)
        with open(p, "r+b") as f:
            f.seek(header.data_start + info.data_offsets[0])
            f.write(values.numpy().tobytes())
        sd, spec = load_unet(p)
        assert spec.prediction == expected and "weights" in spec.prediction_source
        assert len(sd) == 686
        assert sd["out.2.weight"].shape == (4, 320, 3, 3)


# -- writing safely --------------------------------------------------------------------------
def test_never_overwrites_silently_and_leaves_no_temp_files(tmp_path):
    sd = _ldm(TINY_1)
    p = save_unet(tmp_path / "unet.safetensors", sd, TINY_1)
    before = p.read_bytes()
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_unet(p, _ldm(TINY_1, seed=1), TINY_1)
    assert p.read_bytes() == before
    save_unet(p, _ldm(TINY_1, seed=1), TINY_1, overwrite=True)
    assert p.read_bytes() != before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["unet.safetensors"]


def test_failed_write_leaves_nothing(tmp_path):
    sd = dict(_ldm(TINY_1))
    sd["out.2.bias"] = torch.zeros(4, dtype=torch.complex64)  # safetensors cannot store it
    with pytest.raises(CheckpointError, match="out.2.bias"):
        save_unet(tmp_path / "bad.safetensors", sd, TINY_1)
    assert list(tmp_path.iterdir()) == []


def test_incomplete_state_dict_is_refused(tmp_path):
    sd = dict(_ldm(TINY_1))
    del sd["out.2.weight"]
    with pytest.raises(CheckpointError, match="out.2.weight"):
        save_unet(tmp_path / "x.safetensors", sd, TINY_1)


def test_next_free_path_follows_comfyui_numbering(tmp_path):
    target = tmp_path / "my_unet.safetensors"
    assert next_free_path(target) == tmp_path / "my_unet_00001_.safetensors"
    for name in ("my_unet_00001_.safetensors", "my_unet_00007_.safetensors", "other_00042_.safetensors",
                 "my_unet_00009_.png"):
        (tmp_path / name).write_bytes(b"x")
    assert next_free_path(target) == tmp_path / "my_unet_00008_.safetensors"


def test_modelspec_metadata(tmp_path):
    p = save_unet(tmp_path / "tiny.safetensors", _ldm(TINY_1), TINY_1, prediction="v_prediction",
                  metadata={"my.note": "hello"}, source="test suite")
    md = read_header(p).metadata
    assert md["modelspec.sai_model_spec"] == "1.0.0"
    assert md["modelspec.prediction_type"] == "v"
    assert md["modelspec.title"] == "tiny" and md["modelspec.implementation"] == "sgm"
    assert "modelspec.architecture" not in md  # a reduced config is no SAI architecture
    assert md["unet_lab.source"] == "test suite" and md["my.note"] == "hello"
    assert json.loads(md["unet_lab.config"])["norm_num_groups"] == 8
    assert architecture_for(SD1_CONFIG, "epsilon") == "stable-diffusion-v1"
    assert architecture_for(SD2_CONFIG, "v_prediction") == "stable-diffusion-v2-768-v"
    assert architecture_for(SD2_CONFIG, "epsilon") == "stable-diffusion-v2-512"
    assert architecture_for(SDXL_CONFIG, "epsilon") == "stable-diffusion-xl-v1-base"


def test_stored_config_is_ignored_when_it_contradicts_the_weights(tmp_path):
    from safetensors.torch import save_file

    sd = _ldm(TINY_1)
    lie = TINY_1.with_(cross_attention_dim=999).to_dict()
    p = tmp_path / "lying.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(p), metadata={"unet_lab.config": json.dumps(lie)})
    spec = sniff(p)
    assert spec.config.cross_attention_dim == 48 and spec.config_source == "shapes"
    assert any("disagrees" in n for n in spec.notes)


def test_loaded_safetensors_tensors_are_memory_mapped_views(tmp_path):
    """No copy at load: the tensors' bytes live in the file mapping, not in fresh allocations."""
    sd = _ldm(TINY_1)
    p = save_unet(tmp_path / "m.safetensors", sd, TINY_1)
    loaded, _ = load_unet(p)
    header = read_header(p)
    first = min(header.tensors, key=lambda k: header.tensors[k].data_offsets[0])
    base = loaded[first].data_ptr() - header.tensors[first].data_offsets[0]
    # every tensor sits at its file offset inside one mapping of the file
    assert all(t.data_ptr() - base == header.tensors[k].data_offsets[0] for k, t in loaded.items())


def test_misaligned_and_mixed_dtype_tensors_read_correctly(tmp_path):
    """A hand-made file whose F32 tensor starts at an odd offset (allowed by the format)."""
    import struct

    a = torch.tensor([1.5], dtype=torch.float16)
    b = torch.tensor([[1.0, -2.0], [3.25, 4.0]], dtype=torch.float32)
    c = torch.tensor([True, False, True])
    blobs = [("a", "F16", a), ("c", "BOOL", c), ("b", "F32", b)]
    header, offset, data = {}, 0, b""
    for name, dt, t in blobs:
        raw = t.numpy().tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    text = json.dumps(header).encode()
    p = tmp_path / "odd.safetensors"
    p.write_bytes(struct.pack("<Q", len(text)) + text + data)
    from unet_lab.unet_core.checkpoints.readers import load_state_dict

    got = load_state_dict(p)
    assert torch.equal(got["a"], a) and torch.equal(got["b"], b) and torch.equal(got["c"], c)


def test_diffusers_folder_with_pickled_bin_weights(tmp_path):
    model = _diffusers_model(TINY_1, seed=9)
    model.save_pretrained(str(tmp_path / "unet"), safe_serialization=False)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.bin").is_file()
    loaded, spec = load_unet(tmp_path / "unet")
    assert spec.layout == "diffusers" and spec.config == TINY_1
    ref = convert_diffusers_to_ldm(model.state_dict(), TINY_1)
    assert all(torch.equal(loaded[k], ref[k]) for k in ref)


def test_sharded_diffusers_folder(tmp_path):
    model = _diffusers_model(TINY_1, seed=11)
    model.save_pretrained(str(tmp_path / "unet"), max_shard_size="200KB")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    spec = sniff(tmp_path / "unet")
    assert len(spec.weights_paths) > 1 and spec.config == TINY_1
    loaded, _ = load_unet(tmp_path / "unet")
    ref = convert_diffusers_to_ldm(model.state_dict(), TINY_1)
    assert set(loaded) == set(ref) and all(torch.equal(loaded[k], ref[k]) for k in ref)


def test_diffusers_layout_under_a_unet_prefix(tmp_path):
    from safetensors.torch import save_file

    model = _diffusers_model(TINY_1, seed=12)
    p = tmp_path / "trainer_export.safetensors"
    save_file({"unet." + k: v.contiguous() for k, v in model.state_dict().items()}, str(p))
    loaded, spec = load_unet(p)
    assert (spec.layout, spec.unet_prefix) == ("diffusers", "unet.")
    ref = convert_diffusers_to_ldm(model.state_dict(), TINY_1)
    assert all(torch.equal(loaded[k], ref[k]) for k in ref)
