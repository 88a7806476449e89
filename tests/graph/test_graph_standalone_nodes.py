"""The standalone core image nodes against ComfyUI's documented behaviour (layouts, alpha->mask, file naming)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from unet_lab.nodes.host import standalone_nodes as sn
from unet_lab.unet_core.errors import HostError, InputError
from unet_lab.unet_core.graph.schemas import load_core_schemas, schema_from_class, schema_from_object_info


def _rgba(h=5, w=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 4), dtype=np.uint8)


def test_load_image_rgba_gives_image_and_one_minus_alpha(standalone_host):
    standalone_host.input_directory().mkdir(parents=True)
    pixels = _rgba()
    Image.fromarray(pixels, "RGBA").save(standalone_host.input_directory() / "a.png")
    image, mask = sn.LoadImage().load_image("a.png")
    assert image.shape == (1, 5, 7, 3) and image.dtype == torch.float32
    assert mask.shape == (1, 5, 7) and mask.dtype == torch.float32
    assert torch.allclose(image[0], torch.from_numpy(pixels[..., :3].astype(np.float32) / 255.0))
    assert torch.allclose(mask[0], 1.0 - torch.from_numpy(pixels[..., 3].astype(np.float32) / 255.0))


def test_load_image_without_alpha_gives_64x64_zero_mask(standalone_host):
    standalone_host.input_directory().mkdir(parents=True)
    Image.fromarray(_rgba()[..., :3], "RGB").save(standalone_host.input_directory() / "b.png")
    image, mask = sn.LoadImage().load_image("b.png")
    assert image.shape == (1, 5, 7, 3)
    assert mask.shape == (1, 64, 64) and float(mask.abs().sum()) == 0.0


def test_load_image_palette_transparency_and_multi_frame(standalone_host):
    folder = standalone_host.input_directory()
    folder.mkdir(parents=True)
    palette = Image.new("P", (4, 3))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 1), 1)
    palette.info["transparency"] = 0  # palette index 0 transparent
    palette.save(folder / "p.png", transparency=0)
    _image, mask = sn.LoadImage().load_image("p.png")
    expected = torch.ones((3, 4))
    expected[1, 1] = 0.0  # the opaque pixel
    assert torch.equal(mask[0], expected)
    frames = [Image.fromarray(np.full((6, 8, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    image, mask = sn.LoadImage().load_image("anim.gif")
    assert image.shape[0] == 2 and image.shape[1:] == (6, 8, 3) and mask.shape[0] == 2


def test_load_image_lists_validates_and_refuses_escapes(standalone_host):
    folder = standalone_host.input_directory()
    folder.mkdir(parents=True)
    Image.new("RGB", (2, 2)).save(folder / "x.png")
    (folder / "notes.txt").write_text("not an image")
    assert sn.LoadImage.INPUT_TYPES()["required"]["image"][0] == ["x.png"]
    assert sn.LoadImage.VALIDATE_INPUTS("x.png") is True
    assert "Invalid image file" in sn.LoadImage.VALIDATE_INPUTS("y.png")
    assert sn.LoadImage.VALIDATE_INPUTS("../x.png") is not True
    first = sn.LoadImage.IS_CHANGED("x.png")
    Image.new("RGB", (2, 2), (1, 2, 3)).save(folder / "x.png")
    assert sn.LoadImage.IS_CHANGED("x.png") != first
    with pytest.raises(HostError):
        sn.LoadImage().load_image("../../etc/passwd")


def test_save_image_naming_counter_subfolder_and_png_chunks(standalone_host):
    out = standalone_host.output_directory()
    (out / "seg_00007_.png").write_bytes(b"existing")
    (out / "segx_00050_.png").write_bytes(b"other prefix")
    images = torch.rand(2, 3, 4, 3)
    ui = sn.SaveImage().save_images(images, "seg", prompt={"1": {"class_type": "X", "inputs": {}}},
                                    extra_pnginfo={"workflow": {"nodes": []}})
    assert ui == {"ui": {"images": [{"filename": "seg_00008_.png", "subfolder": "", "type": "output"},
                                    {"filename": "seg_00009_.png", "subfolder": "", "type": "output"}]}}
    assert (out / "seg_00007_.png").read_bytes() == b"existing"
    with Image.open(out / "seg_00009_.png") as saved:
        assert json.loads(saved.text["prompt"]) == {"1": {"class_type": "X", "inputs": {}}}
        assert json.loads(saved.text["workflow"]) == {"nodes": []}
        pixels = np.array(saved)
    expected = np.clip(255.0 * images[1].numpy(), 0, 255).astype(np.uint8)
    assert pixels.shape == (3, 4, 3) and np.array_equal(pixels, expected)
    ui = sn.SaveImage().save_images(images[:1], "runs/a/seg")
    assert ui["ui"]["images"] == [{"filename": "seg_00001_.png", "subfolder": "runs/a", "type": "output"}]
    assert (out / "runs" / "a" / "seg_00001_.png").is_file()
    with pytest.raises(HostError, match="outside the output folder"):
        sn.SaveImage().save_images(images[:1], "../escape")


def test_save_image_never_overwrites_a_file_that_appears(standalone_host, monkeypatch):
    out = standalone_host.output_directory()
    (out / "race_00001_.png").write_bytes(b"someone else's")
    # Pretend the folder listing missed that file (another process wrote it meanwhile).
    monkeypatch.setattr(sn, "save_path", lambda prefix, folder, w=0, h=0: (out, "race", 1, ""))
    ui = sn.SaveImage().save_images(torch.zeros(1, 2, 2, 3), "race")
    assert ui["ui"]["images"][0]["filename"] == "race_00002_.png"
    assert (out / "race_00001_.png").read_bytes() == b"someone else's"
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp_")]


def test_preview_image_writes_temp_files(standalone_host, tmp_path):
    standalone_host.temp_directory = lambda: tmp_path / "temp"
    ui = sn.PreviewImage().save_images(torch.ones(1, 2, 2, 3))
    entry = ui["ui"]["images"][0]
    assert entry["type"] == "temp" and entry["filename"].startswith("ComfyUI_temp_")
    assert (tmp_path / "temp" / entry["filename"]).is_file()


def test_mask_to_image_and_image_to_mask_layouts():
    mask = torch.rand(2, 3, 5)
    (image,) = sn.MaskToImage().mask_to_image(mask)
    assert image.shape == (2, 3, 5, 3)
    for c in range(3):
        assert torch.equal(image[..., c], mask)
    (single,) = sn.MaskToImage().mask_to_image(mask[0])  # [H,W] -> [1,H,W,3]
    assert single.shape == (1, 3, 5, 3)
    rgba = torch.rand(2, 3, 5, 4)
    for index, channel in enumerate(("red", "green", "blue", "alpha")):
        (got,) = sn.ImageToMask().image_to_mask(rgba, channel)
        assert got.shape == (2, 3, 5) and torch.equal(got, rgba[..., index])
    with pytest.raises(InputError, match="no alpha channel"):
        sn.ImageToMask().image_to_mask(torch.rand(1, 2, 2, 3), "alpha")


def test_schemas_match_the_recorded_comfyui_ones(standalone_host):
    core = load_core_schemas()
    for name, cls in sn.NODE_CLASS_MAPPINGS.items():
        ours, theirs = schema_from_class(name, cls), schema_from_object_info(name, core[name])
        assert list(ours.inputs) == list(theirs.inputs), name
        assert [s.type_name for s in ours.inputs.values()] == [s.type_name for s in theirs.inputs.values()], name
        assert ours.hidden == theirs.hidden and ours.outputs == tuple(theirs.outputs), name
        assert ours.output_node == theirs.output_node, name
        for spec in ours.inputs.values():
            if not theirs.inputs[spec.name].options.get("file_list"):
                assert spec.choices == theirs.inputs[spec.name].choices, (name, spec.name)
        for key in ("default", "image_upload"):
            for spec in ours.inputs.values():
                assert spec.options.get(key) == theirs.inputs[spec.name].options.get(key), (name, key)
