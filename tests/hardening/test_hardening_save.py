"""Saving never overwrites a user's file and is atomic (temp file, then rename).

For the UNet writer (and Save UNet), the segmentation writer (and Save Segmentation U-Net) and
the standalone SaveImage: existing files are never replaced (numbered names as ComfyUI's
``name_00001_``), and a failure injected mid-save (the serialiser writing half the bytes then
raising, or ``os.replace`` / ``os.link`` raising) leaves the old file byte-identical and no
temporary file behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from fixtures_hardening import (
    load_unet_node,
    make_host,
    node_result,
    tiny_seg_model,
    tiny_unet_config,
    tiny_unet_state_dict,
)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _half_then_fail(path, *args, **kwargs):
    Path(path).write_bytes(b"partial" * 100)
    raise OSError(28, "No space left on device (injected)")


# ---------------------------------------------------------------- UNet writer
def test_unet_writer_refuses_existing_file(tmp_path):
    from unet_lab.unet_core.checkpoints.writer import save_unet
    from unet_lab.unet_core.errors import CheckpointError

    target = tmp_path / "mine.safetensors"
    target.write_bytes(b"the user's own file")
    with pytest.raises(CheckpointError):
        save_unet(target, tiny_unet_state_dict(), tiny_unet_config())
    assert target.read_bytes() == b"the user's own file"
    assert _files(tmp_path) == {"mine.safetensors": b"the user's own file"}


def test_next_free_path_numbers_like_comfyui(tmp_path):
    from unet_lab.unet_core.checkpoints.writer import next_free_path

    assert next_free_path(tmp_path / "UNet.safetensors") == tmp_path / "UNet_00001_.safetensors"
    for n in (1, 3):
        (tmp_path / f"UNet_{n:05}_.safetensors").write_bytes(b"x")
    (tmp_path / "UNet_00009_.other").write_bytes(b"x")  # another extension does not count
    assert next_free_path(tmp_path / "UNet.safetensors") == tmp_path / "UNet_00004_.safetensors"


@pytest.mark.parametrize("failure", ["serialiser", "replace"])
def test_unet_writer_failure_keeps_old_file(tmp_path, monkeypatch, failure):
    from unet_lab.unet_core.checkpoints import writer

    target = tmp_path / "model.safetensors"
    writer.save_unet(target, tiny_unet_state_dict(seed=0), tiny_unet_config())
    old = target.read_bytes()
    if failure == "serialiser":
        monkeypatch.setattr(writer, "write_safetensors", _half_then_fail)
    else:
        def refuse(src, dst):
            raise OSError(18, "Invalid cross-device link (injected)")
        monkeypatch.setattr(writer.os, "replace", refuse)
    with pytest.raises(OSError):
        writer.save_unet(target, tiny_unet_state_dict(seed=1), tiny_unet_config(), overwrite=True)
    monkeypatch.undo()
    assert target.read_bytes() == old, "the old file was damaged by a failed save"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"], "a temp file was left behind"


def test_save_unet_node_numbers_and_never_overwrites(tmp_path):
    from unet_lab.nodes.diffusion import UNetLabSaveUNet
    from unet_lab.nodes.host import use_host
    from unet_lab.unet_core.checkpoints.writer import save_unet

    host = make_host(tmp_path)
    dm = tmp_path / "models" / "diffusion_models"
    save_unet(dm / "src.safetensors", tiny_unet_state_dict(), tiny_unet_config())
    (dm / "out").mkdir()
    (dm / "out" / "u_00001_.safetensors").write_bytes(b"user file 1")
    with use_host(host):
        model, _ = load_unet_node("src.safetensors")
        first = node_result(UNetLabSaveUNet().save(model, "out/u", "ldm", "keep"))[0]
        second = node_result(UNetLabSaveUNet().save(model, "out/u", "ldm", "keep"))[0]
    assert Path(first).name == "u_00002_.safetensors" and Path(second).name == "u_00003_.safetensors"
    assert (dm / "out" / "u_00001_.safetensors").read_bytes() == b"user file 1"
    from safetensors.torch import load_file

    a, b = load_file(first), load_file(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in dm.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- segmentation writer
def test_segmentation_writer_refuses_existing_file(tmp_path):
    from unet_lab.unet_core.errors import SegmentationError
    from unet_lab.unet_core.segmentation.checkpoint import SegmentationMeta, save_segmentation

    model = tiny_seg_model()
    target = tmp_path / "seg.safetensors"
    target.write_bytes(b"mine")
    with pytest.raises(SegmentationError):
        save_segmentation(target, model, SegmentationMeta.for_model(model))
    # the writer appends .safetensors to other names: that must not overwrite either
    (tmp_path / "x.safetensors").write_bytes(b"mine too")
    with pytest.raises(SegmentationError):
        save_segmentation(tmp_path / "x", model, SegmentationMeta.for_model(model))
    assert _files(tmp_path) == {"seg.safetensors": b"mine", "x.safetensors": b"mine too"}


@pytest.mark.parametrize("failure", ["serialiser", "replace"])
def test_segmentation_writer_failure_keeps_old_file(tmp_path, monkeypatch, failure):
    from unet_lab.unet_core.segmentation import checkpoint

    model = tiny_seg_model()
    target = tmp_path / "seg.safetensors"
    checkpoint.save_segmentation(target, model, checkpoint.SegmentationMeta.for_model(model))
    old = target.read_bytes()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    if failure == "serialiser":
        monkeypatch.setattr(checkpoint, "save_file", lambda tensors, path, metadata=None: _half_then_fail(path))
    else:
        def refuse(src, dst):
            raise OSError(18, "Invalid cross-device link (injected)")
        monkeypatch.setattr(checkpoint.os, "replace", refuse)
    with pytest.raises(OSError):
        checkpoint.save_segmentation(target, model, checkpoint.SegmentationMeta.for_model(model), overwrite=True)
    monkeypatch.undo()
    assert target.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.safetensors"]


def test_save_segmentation_node_numbers(tmp_path):
    from unet_lab.nodes.host import use_host
    from unet_lab.nodes.segmentation import UNetLabSaveSegmentationUNet
    from unet_lab.unet_core.segmentation.checkpoint import SegmentationMeta
    from unet_lab.unet_core.segmentation.model import SegUNet

    host = make_host(tmp_path)
    folder = tmp_path / "models" / "unet_segmentation" / "lab"
    folder.mkdir(parents=True)
    (folder / "seg_00001_.safetensors").write_bytes(b"user")
    model = tiny_seg_model()
    seg = SegUNet(model, SegmentationMeta.for_model(model), "t")
    with use_host(host):
        a = node_result(UNetLabSaveSegmentationUNet().save(seg, "lab/seg"))[0]
        b = node_result(UNetLabSaveSegmentationUNet().save(seg, "lab/seg"))[0]
    assert (Path(a).name, Path(b).name) == ("seg_00002_.safetensors", "seg_00003_.safetensors")
    assert (folder / "seg_00001_.safetensors").read_bytes() == b"user"


# ---------------------------------------------------------------- standalone SaveImage
def _png(path: Path, value: int) -> bytes:
    Image.new("RGB", (4, 4), (value, value, value)).save(path)
    return path.read_bytes()


def test_save_image_numbers_after_existing_files(tmp_path):
    from unet_lab.nodes.host import use_host
    from unet_lab.nodes.host.standalone_nodes import SaveImage

    host = make_host(tmp_path)
    out = tmp_path / "output"
    out.mkdir()
    old1 = _png(out / "ComfyUI_00001_.png", 10)
    old7 = _png(out / "ComfyUI_00007_.png", 20)
    with use_host(host):
        ui = SaveImage().save_images(torch.rand(2, 4, 4, 3), "ComfyUI")["ui"]["images"]
    assert [i["filename"] for i in ui] == ["ComfyUI_00008_.png", "ComfyUI_00009_.png"]
    assert (out / "ComfyUI_00001_.png").read_bytes() == old1 and (out / "ComfyUI_00007_.png").read_bytes() == old7
    assert sorted(p.name for p in out.iterdir()) == ["ComfyUI_00001_.png", "ComfyUI_00007_.png",
                                                     "ComfyUI_00008_.png", "ComfyUI_00009_.png"]


def test_save_image_never_overwrites_a_file_that_appears(tmp_path, monkeypatch):
    """A file created at the chosen name between numbering and writing is kept; the next number is used."""
    from unet_lab.nodes.host import standalone_nodes, use_host

    host = make_host(tmp_path)
    out = tmp_path / "output"
    out.mkdir()
    real = standalone_nodes.save_path

    def racing(prefix, output_dir, width=0, height=0):
        folder, stem, counter, sub = real(prefix, output_dir, width, height)
        _png(folder / f"{stem}_{counter:05}_.png", 99)  # another process got there first
        return folder, stem, counter, sub

    monkeypatch.setattr(standalone_nodes, "save_path", racing)
    with use_host(host):
        ui = standalone_nodes.SaveImage().save_images(torch.zeros(1, 4, 4, 3), "img")["ui"]["images"]
    assert ui[0]["filename"] == "img_00002_.png"
    assert Image.open(out / "img_00001_.png").getpixel((0, 0)) == (99, 99, 99)
    assert Image.open(out / "img_00002_.png").getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.parametrize("failure", ["encoder", "link"])
def test_save_image_failure_leaves_nothing(tmp_path, monkeypatch, failure):
    from unet_lab.nodes.host import standalone_nodes, use_host

    host = make_host(tmp_path)
    out = tmp_path / "output"
    out.mkdir()
    old = _png(out / "img_00001_.png", 50)
    if failure == "encoder":
        monkeypatch.setattr(Image.Image, "save", lambda self, fp, *a, **k: _half_then_fail(fp))
    else:
        def no_link(src, dst):
            raise PermissionError(1, "Operation not permitted (injected)")
        monkeypatch.setattr(standalone_nodes.os, "link", no_link)
        monkeypatch.setattr("builtins.open", _failing_open(open))
    with use_host(host), pytest.raises(OSError):
        standalone_nodes.SaveImage().save_images(torch.rand(1, 4, 4, 3), "img")
    monkeypatch.undo()
    assert (out / "img_00001_.png").read_bytes() == old
    remaining = sorted(p.name for p in out.iterdir())
    assert remaining in (["img_00001_.png"], ["img_00001_.png", "img_00002_.png"]), remaining
    if len(remaining) == 2:  # the exclusive-create fallback may leave the new name only if complete
        assert Image.open(out / "img_00002_.png").size == (4, 4)


def _failing_open(real_open):
    """open() whose exclusive-create writes fail half-way (the fallback when hard links are refused)."""
    def fake(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "x" in mode:
            handle.close()
            os.unlink(file)
            raise OSError(28, "No space left on device (injected)")
        return handle
    return fake
