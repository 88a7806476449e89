"""Bad input: each case raises CheckpointError naming the file and saying what it is and what to do."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch

import fixtures_checkpoints as fx
from unet_lab.unet_core.checkpoints.loader import load_unet
from unet_lab.unet_core.checkpoints.readers import load_state_dict
from unet_lab.unet_core.checkpoints.safetensors_header import read_header
from unet_lab.unet_core.checkpoints.sniff import sniff
from unet_lab.unet_core.checkpoints.spec import require_unet
from unet_lab.unet_core.errors import CheckpointError


def _fails(path, *needles, fn=load_unet):
    with pytest.raises(CheckpointError) as info:
        fn(path)
    msg = str(info.value)
    assert os.path.basename(str(path)) in msg  # names the file
    for n in needles:
        assert n.lower() in msg.lower(), (n, msg)
    return msg


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.safetensors"
    p.write_bytes(b"")
    _fails(p, "empty", "0 bytes", "download")
    _fails(p, "empty", fn=read_header)
    q = tmp_path / "empty.ckpt"
    q.write_bytes(b"")
    _fails(q, "empty")


def test_truncated_safetensors(tmp_path):
    p = fx.write_unet(tmp_path, "sd1", "ldm", name="cut.safetensors")
    full = p.stat().st_size
    with open(p, "r+b") as f:
        f.truncate(full // 3)
    msg = _fails(p, "truncated", "cut off")
    assert "33." in msg  # how much is present


def test_git_lfs_pointer(tmp_path):
    p = tmp_path / "sd_xl_base_1.0.safetensors"
    p.write_text("version https://git-lfs.github.com/spec/v1\n"
                 "oid sha256:31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b\n"
                 "size 6938078334\n")
    msg = _fails(p, "Git LFS pointer", "git lfs pull")
    assert "6.94 GB" in msg
    pt = tmp_path / "model.ckpt"
    pt.write_bytes(p.read_bytes())
    _fails(pt, "Git LFS pointer")


@pytest.mark.parametrize("content", [
    "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Log in to download</body></html>",
    "\n  <html><body>404 Not Found</body></html>",
])
def test_html_page_saved_as_safetensors(tmp_path, content):
    p = tmp_path / "model.safetensors"
    p.write_text(content)
    _fails(p, "HTML page", "download")


def test_header_length_beyond_the_end(tmp_path):
    p = tmp_path / "short.safetensors"
    p.write_bytes(struct.pack("<Q", 50_000_000) + b'{"a":')
    _fails(p, "header length", "only 13 bytes")


def test_header_is_not_json(tmp_path):
    p = tmp_path / "garbled.safetensors"
    body = b"\x00\xff" * 20
    p.write_bytes(struct.pack("<Q", len(body)) + body)
    _fails(p, "not valid JSON")


def test_plain_text_file(tmp_path):
    p = tmp_path / "notes.safetensors"
    p.write_text("these are my prompt notes, not a model\n")
    _fails(p, "text file")


def test_vae_only_file(tmp_path):
    for name, shapes in (("sdxl_vae.safetensors", fx.vae_shapes()), ("vae-ft-mse.safetensors", fx.ldm_vae_shapes())):
        p = fx.write_header_file(tmp_path / name, shapes)
        assert sniff(p).kind == "vae"
        _fails(p, "this is a VAE", "Load VAE")


def test_text_encoder_only_file(tmp_path):
    p = fx.write_header_file(tmp_path / "clip_l.safetensors", fx.clip_text_shapes())
    assert sniff(p).kind == "text_encoder"
    _fails(p, "text encoder", "Load CLIP")


@pytest.mark.parametrize("maker,fmt", [(fx.kohya_lora_shapes, "kohya"), (fx.peft_lora_shapes, "PEFT")])
def test_sdxl_lora_offered_as_a_unet(tmp_path, maker, fmt):
    p = fx.write_header_file(tmp_path / "pixel_art_xl.safetensors", maker("sdxl"))
    spec = sniff(p)
    assert (spec.kind, spec.lora_family) == ("lora", "sdxl")
    msg = _fails(p, "this is a LoRA for SDXL", "Apply LoRA", fmt)
    assert "not a UNet" in msg and "models/loras" in msg


def test_sd1_lora_family(tmp_path):
    p = fx.write_header_file(tmp_path / "style.safetensors", fx.kohya_lora_shapes("sd1"))
    assert sniff(p).lora_family == "sd1"
    _fails(p, "LoRA for SD1.x")


def test_unknown_file(tmp_path):
    p = fx.write_header_file(tmp_path / "mystery.safetensors",
                             {"backbone.layer1.weight": (64, 3, 7, 7), "head.fc.weight": (10, 64)})
    assert sniff(p).kind == "unknown"
    _fails(p, "no diffusion UNet found", "backbone.layer1.weight")


class _Payload:
    """Unpickling this object would create ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, zip_format):
    marker = tmp_path / "payload_ran.txt"
    p = tmp_path / "evil_unet.ckpt"
    torch.save({"state_dict": {"input_blocks.0.0.weight": torch.zeros(2)}, "extra": _Payload(marker)}, p,
               _use_new_zipfile_serialization=zip_format)
    assert not marker.exists()
    for fn in (load_unet, sniff, load_state_dict):
        msg = _fails(p, "refused", "run arbitrary code", "safetensors", fn=fn)
        assert "nothing in it ran" in msg and "open" in msg  # names what it asked for
        assert not marker.exists()
    # The payload is real: an unrestricted unpickle (what we never do) runs it.
    torch.load(p, weights_only=False)
    assert marker.exists()


def test_diffusers_pipeline_folder_without_config_json(tmp_path):
    folder = fx.write_unet(tmp_path, "sd1", "diffusers")
    (folder / "unet" / "config.json").unlink()
    msg = _fails(folder, "unet/config.json", "incomplete", fn=sniff)
    assert "diffusion_pytorch_model.safetensors" in msg  # the way out: load the file directly
    _fails(folder, "unet/config.json")
    # the weight file alone is read with its config inferred from shapes
    spec = sniff(folder / "unet" / "diffusion_pytorch_model.safetensors")
    assert spec.family == "sd1" and spec.config_source == "shapes"


def test_bare_unet_folder_without_config_json_is_inferred(tmp_path):
    folder = fx.write_unet(tmp_path, "sd2", "diffusers")
    (folder / "unet" / "config.json").unlink()
    spec = sniff(folder / "unet")  # no model_index.json here: config inferred, and said so
    assert spec.family == "sd2" and spec.config_source == "shapes"
    assert any("no config.json" in n for n in spec.notes)


def test_diffusers_folder_without_weights(tmp_path):
    folder = tmp_path / "empty_unet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    _fails(folder, "no diffusers UNet weights", fn=sniff)


def test_config_json_contradicting_the_weights(tmp_path):
    folder = fx.write_unet(tmp_path, "sd1", "diffusers")
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    cfg["cross_attention_dim"] = 1024
    (folder / "unet" / "config.json").write_text(json.dumps(cfg))
    _fails(folder, "config.json disagrees", "cross_attention_dim", fn=sniff)


def test_missing_file(tmp_path):
    _fails(tmp_path / "nope.safetensors", "not found")


def test_incomplete_unet_is_refused_by_the_loader(tmp_path):
    shapes = fx.unet_shapes("sd1", "ldm")
    shapes.pop("output_blocks.5.2.conv.weight")
    p = fx.write_header_file(tmp_path / "partial.safetensors", shapes)
    spec = sniff(p)
    assert any("missing" in n for n in spec.notes)
    _fails(p, "incomplete", "output_blocks.5.2.conv.weight")


def test_require_unet_message_for_unknown_kind_lists_contents(tmp_path):
    p = fx.write_header_file(tmp_path / "vae_and_clip.safetensors",
                             {**{"first_stage_model." + k: v for k, v in fx.ldm_vae_shapes().items()},
                              **{"cond_stage_model.transformer." + k: v for k, v in fx.clip_text_shapes().items()}})
    with pytest.raises(CheckpointError, match="vae"):
        require_unet(sniff(p))


def test_controlnet_is_named(tmp_path):
    shapes = {"control_model." + k: v for k, v in fx.unet_shapes("sd1", "ldm").items()
              if not k.startswith(("output_blocks.", "out."))}
    shapes["control_model.input_hint_block.0.weight"] = (16, 3, 3, 3)
    shapes["control_model.zero_convs.0.0.weight"] = (320, 320, 1, 1)
    p = fx.write_header_file(tmp_path / "control_sd15_canny.safetensors", shapes)
    assert sniff(p).kind == "unknown"
    _fails(p, "ControlNet", "Load ControlNet")


def test_header_entry_size_disagrees_with_shape(tmp_path):
    header = {"w": {"dtype": "F16", "shape": [4, 4], "data_offsets": [0, 16]}}
    text = json.dumps(header).encode()
    p = tmp_path / "damaged.safetensors"
    p.write_bytes(struct.pack("<Q", len(text)) + text + bytes(16))
    _fails(p, "spans 16 bytes instead of 32", "damaged", fn=sniff)
