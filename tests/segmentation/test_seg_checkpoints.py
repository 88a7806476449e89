"""Segmentation checkpoints: our format, milesial and smp layouts, and bad files.

The layouts are checked against key/shape tables written in ``fixtures_segmodels`` from
milesial's and smp's structure, and the milesial model against a reference forward in
``torch.nn.functional``; nothing here compares the pack with its own output alone.
"""

from __future__ import annotations

import importlib.util
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from fixtures_segmodels import (
    make_milesial_state_dict,
    make_state_dict,
    milesial_reference_forward,
    milesial_shapes,
    randomize_batchnorm_stats,
    smp_unet_resnet34_shapes,
)
from unet_lab.unet_core.errors import SegmentationError
from unet_lab.unet_core.segmentation.checkpoint import SegmentationMeta, load_segmentation, save_segmentation
from unet_lab.unet_core.segmentation.registry import build_model


def _shapes(model: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- milesial Pytorch-UNet

@pytest.mark.parametrize("bilinear", [False, True], ids=["transpose", "bilinear"])
def test_unet_keys_and_shapes_equal_milesial_layout(bilinear):
    model = build_model("unet", in_channels=3, out_channels=2, upsampling="bilinear" if bilinear else "transpose")
    assert _shapes(model) == milesial_shapes(3, 2, bilinear)


def test_milesial_pth_loads_strict_and_matches_reference_forward(tmp_path):
    sd = make_milesial_state_dict(3, 2, bilinear=False, seed=1)
    path = tmp_path / "checkpoint_epoch5.pth"
    torch.save({**sd, "mask_values": [0, 1]}, path)
    model, meta = load_segmentation(path)
    assert model.config == {"architecture": "unet", "in_channels": 3, "out_channels": 2, "depth": 4,
                            "base_channels": 64, "norm": "batch", "upsampling": "transpose",
                            "pad_mode": "reflect"}
    assert meta.source == "milesial" and meta.class_values == [0, 1]
    assert meta.normalization["mean"] == [0.0] * 3 and meta.normalization["std"] == [1.0] * 3
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(x)
        ref = milesial_reference_forward(sd, x)
    assert ours.shape == (1, 2, 64, 64)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_milesial_bilinear_single_class_and_rgb_mask_values(tmp_path):
    sd = make_milesial_state_dict(1, 1, bilinear=True, seed=3)
    path = tmp_path / "gray.pth"
    torch.save({**sd, "mask_values": [[0, 0, 0], [255, 255, 255]]}, path)
    model, meta = load_segmentation(path)
    assert model.config["upsampling"] == "bilinear" and model.config["in_channels"] == 1
    assert model.out_channels == 1 and meta.class_names == ["foreground"]
    assert meta.class_values == [[0, 0, 0], [255, 255, 255]]
    out = model(torch.rand(1, 1, 50, 70))
    assert out.shape == (1, 1, 50, 70)


def test_milesial_missing_key_names_the_file(tmp_path):
    sd = make_milesial_state_dict(3, 2)
    del sd["up2.conv.double_conv.3.weight"]
    path = tmp_path / "broken_unet.pth"
    torch.save(sd, path)
    with pytest.raises(SegmentationError, match=r"broken_unet\.pth.*missing key.*up2\.conv\.double_conv\.3\.weight"):
        load_segmentation(path)


# ---------------------------------------------------------------- smp

def test_smp_resnet34_unet_keys_and_shapes_equal_smp_layout():
    model = build_model("smp_unet", encoder_name="resnet34", in_channels=3, out_channels=1)
    expected = smp_unet_resnet34_shapes(3, 1)
    assert list(_shapes(model)) == list(expected)  # same keys, same order as smp's module tree
    assert _shapes(model) == expected
    # smp's README: Unet with a resnet34 encoder, 24.4 M parameters.
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(24.44e6, abs=0.01e6)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_smp_layout_state_dict_loads_strict(tmp_path, suffix):
    shapes = smp_unet_resnet34_shapes(3, 2, decoder_channels=(64, 32, 32, 16, 8))
    sd = make_state_dict(shapes, seed=4)
    path = tmp_path / f"smp_unet{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": sd, "epoch": 3}, path)
    else:
        save_file(sd, str(path))
    model, meta = load_segmentation(path)
    assert model.config["architecture"] == "smp_unet"
    assert model.config["encoder_name"] == "resnet34" and model.config["decoder_channels"] == [64, 32, 32, 16, 8]
    assert model.out_channels == 2 and meta.source == "smp"
    assert meta.normalization["mean"] == pytest.approx([0.485, 0.456, 0.406])
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    assert model(torch.rand(1, 3, 70, 90)).shape == (1, 2, 70, 90)


def test_smp_save_pretrained_folder_loads(tmp_path):
    torch.manual_seed(0)
    ref = build_model("smp_unet_plus_plus", encoder_name="resnet18", decoder_channels=[32, 16, 16, 8, 8],
                      out_channels=3)
    randomize_batchnorm_stats(ref)
    folder = tmp_path / "smp_model"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "encoder_name": "resnet18", "encoder_depth": 5, "encoder_weights": None,
        "decoder_use_norm": "batchnorm", "decoder_channels": [32, 16, 16, 8, 8],
        "decoder_attention_type": None, "decoder_interpolation": "nearest", "in_channels": 3, "classes": 3,
        "activation": None, "_model_class": "UnetPlusPlus"}))
    model, meta = load_segmentation(folder)
    assert model.config["architecture"] == "smp_unet_plus_plus" and meta.source == "smp"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ref.eval()(x))


def test_smp_folder_with_unsupported_options_is_refused(tmp_path):
    folder = tmp_path / "scse"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_model_class": "Unet", "decoder_attention_type": "scse"}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(SegmentationError, match="decoder_attention_type"):
        load_segmentation(folder)
    (folder / "config.json").write_text(json.dumps({"_model_class": "FPN"}))
    with pytest.raises(SegmentationError, match="FPN"):
        load_segmentation(folder)


def _import_smp():
    if importlib.util.find_spec("segmentation_models_pytorch") is None:
        pytest.skip("segmentation_models_pytorch is not installed")
    try:
        import segmentation_models_pytorch as smp
    except Exception as exc:  # smp needs torchvision, which may not import beside this torch
        pytest.skip(f"segmentation_models_pytorch does not import: {exc}")
    return smp


@pytest.mark.parametrize("cls_name,encoder", [("Unet", "resnet34"), ("Unet", "resnet50"),
                                              ("UnetPlusPlus", "resnet18")])
def test_smp_parity_with_smp(cls_name, encoder):
    smp = _import_smp()
    torch.manual_seed(0)
    theirs = getattr(smp, cls_name)(encoder, encoder_weights=None, in_channels=3, classes=2).eval()
    randomize_batchnorm_stats(theirs)
    arch = "smp_unet" if cls_name == "Unet" else "smp_unet_plus_plus"
    ours = build_model(arch, encoder_name=encoder, out_channels=2).eval()
    assert _shapes(ours) == _shapes(theirs) and list(_shapes(ours)) == list(_shapes(theirs))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_smp_resnet34_layout_fixture_matches_smp():
    smp = _import_smp()
    theirs = smp.Unet("resnet34", encoder_weights=None, in_channels=3, classes=1)
    assert _shapes(theirs) == smp_unet_resnet34_shapes(3, 1)


def test_real_smp_save_pretrained_folder_loads(tmp_path):
    smp = _import_smp()
    torch.manual_seed(0)
    theirs = smp.Unet("resnet18", encoder_weights=None, classes=3, decoder_channels=(64, 32, 16, 16, 8)).eval()
    randomize_batchnorm_stats(theirs)
    theirs.save_pretrained(str(tmp_path / "smp_unet"))
    model, meta = load_segmentation(tmp_path / "smp_unet")
    assert model.config["decoder_channels"] == [64, 32, 16, 16, 8] and meta.source == "smp"
    x = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), theirs(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- our format and bad files

def _small_saved(tmp_path, name="small.safetensors"):
    model = build_model("unet", base_channels=4, depth=2, out_channels=1)
    return model, save_segmentation(tmp_path / name, model, SegmentationMeta.for_model(model))


def test_header_alone_rebuilds_the_model(tmp_path):
    from safetensors import safe_open

    model, path = _small_saved(tmp_path)
    with safe_open(str(path), framework="pt") as fh:
        md = fh.metadata()
    assert md["architecture"] == "unet"
    assert json.loads(md["hparams"])["base_channels"] == 4
    assert json.loads(md["class_names"]) == ["foreground"] and json.loads(md["threshold"]) == 0.5
    assert json.loads(md["normalization"])["scale"] == "0..1"


def test_save_never_overwrites_silently(tmp_path):
    model, path = _small_saved(tmp_path)
    before = path.read_bytes()
    with pytest.raises(SegmentationError, match="exists"):
        save_segmentation(path, model, SegmentationMeta.for_model(model))
    assert path.read_bytes() == before
    save_segmentation(path, model, SegmentationMeta.for_model(model, threshold=0.7), overwrite=True)
    assert load_segmentation(path)[1].threshold == pytest.approx(0.7)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left


def test_save_refuses_meta_of_another_architecture(tmp_path):
    model = build_model("unet", base_channels=4, depth=2)
    meta = SegmentationMeta(architecture="attention_unet", hparams={})
    with pytest.raises(SegmentationError, match="attention_unet"):
        save_segmentation(tmp_path / "x.safetensors", model, meta)


def test_wrong_architecture_metadata_names_the_file(tmp_path):
    model, path = _small_saved(tmp_path, "wrongarch.safetensors")
    from safetensors.torch import load_file

    sd = load_file(str(path))
    save_file(sd, str(path), metadata={"unet_lab.format": "segmentation", "architecture": "resunet3000",
                                       "hparams": "{}"})
    with pytest.raises(SegmentationError, match=r"wrongarch\.safetensors.*resunet3000"):
        load_segmentation(path)
    save_file(sd, str(path), metadata={"unet_lab.format": "segmentation", "architecture": "attention_unet",
                                       "hparams": json.dumps(model.hparams())})
    with pytest.raises(SegmentationError, match=r"wrongarch\.safetensors.*(missing|unexpected)"):
        load_segmentation(path)


def test_missing_keys_in_our_format_name_the_file(tmp_path):
    model, path = _small_saved(tmp_path, "partial.safetensors")
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as fh:
        md = fh.metadata()
    sd = load_file(str(path))
    del sd["outc.conv.weight"]
    save_file(sd, str(path), metadata=md)
    with pytest.raises(SegmentationError, match=r"partial\.safetensors.*outc\.conv\.weight"):
        load_segmentation(path)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"inc.double_conv.0.weight": torch.zeros(1), "x": _Payload()}, path)
    with pytest.raises(SegmentationError, match=r"evil\.pth.*weights_only"):
        load_segmentation(path)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"a": _Payload()}))
    with pytest.raises(SegmentationError, match=r"raw\.pkl"):
        load_segmentation(raw)
    assert "this must never run" not in capsys.readouterr().out


@pytest.mark.parametrize("content,needle", [
    (b"", "empty"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "LFS"),
    (b"hello world, not weights at all", "neither"),
])
def test_garbage_files_name_the_file(tmp_path, content, needle):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(SegmentationError, match=rf"junk\.safetensors.*{needle}|{needle}.*junk"):
        load_segmentation(path)


def test_unknown_state_dict_says_what_it_looks_like(tmp_path):
    path = tmp_path / "sd15_unet.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, str(path))
    with pytest.raises(SegmentationError, match=r"sd15_unet\.safetensors.*model"):
        load_segmentation(path)
    with pytest.raises(SegmentationError, match="no such file"):
        load_segmentation(tmp_path / "absent.safetensors")
