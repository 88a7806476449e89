"""File names from the UI can never reach outside the model/output folders.

ComfyUI's folder_paths.get_full_path confines a name with ``relpath(join("/", name), "/")``
(so ``../../x`` and ``/x`` can only name files inside the folder). The standalone host is
stricter and refuses them with a HostError naming the folder; symbolic links that lead out of
a model folder are refused too (DESIGN: host layer). Each case puts a real, loadable file at
the place the escape would reach, so a missing check would succeed instead of raising.
"""

from __future__ import annotations

import os

import pytest
import torch

from fixtures_hardening import (
    load_unet_node,
    make_host,
    node_result,
    tiny_seg_model,
    tiny_unet_config,
    tiny_unet_state_dict,
)

ESCAPES = ["../outside.safetensors", "../../outside.safetensors", "sub/../../outside.safetensors",
           "./../outside.safetensors", "..", "../", "sub/../../../etc/passwd", "../../../../../../etc/passwd"]


@pytest.fixture
def layout(tmp_path):
    """models/{diffusion_models,unet_segmentation,loras}, with real files both inside and just outside."""
    from unet_lab.nodes.host import use_host
    from unet_lab.unet_core.checkpoints.writer import save_unet
    from unet_lab.unet_core.segmentation.checkpoint import SegmentationMeta, save_segmentation

    base = tmp_path / "base"
    host = make_host(base)
    dm = base / "models" / "diffusion_models"
    seg = base / "models" / "unet_segmentation"
    (dm / "sub").mkdir(parents=True)
    seg.mkdir(parents=True)
    (base / "models" / "loras").mkdir(parents=True)
    sd, config = tiny_unet_state_dict(), tiny_unet_config()
    save_unet(dm / "sub" / "inside.safetensors", sd, config)
    # the escape targets: valid files one and two levels above the model folders
    for target in (base / "models" / "outside.safetensors", base / "outside.safetensors",
                   tmp_path / "outside.safetensors"):
        save_unet(target, sd, config)
    model = tiny_seg_model()
    save_segmentation(base / "models" / "outside_seg.safetensors", model, SegmentationMeta.for_model(model))
    outside_dir = tmp_path / "elsewhere"
    outside_dir.mkdir()
    save_unet(outside_dir / "far.safetensors", sd, config)
    os.symlink(outside_dir / "far.safetensors", dm / "link_out.safetensors")
    os.symlink(outside_dir, dm / "dir_out")
    os.symlink(base / "models" / "outside_seg.safetensors", seg / "seg_link_out.safetensors")
    os.symlink(dm / "sub" / "inside.safetensors", dm / "link_in.safetensors")  # stays inside: allowed
    with use_host(host):
        yield host, base, tmp_path


@pytest.mark.parametrize("name", ESCAPES + ["/etc/passwd", "__ABS__", "link_out.safetensors",
                                            "dir_out/far.safetensors", "", "a\x00b.safetensors"])
def test_host_resolve_refuses_escapes(layout, name):
    from unet_lab.unet_core.errors import HostError

    host, base, tmp_path = layout
    if name == "__ABS__":
        name = str(tmp_path / "outside.safetensors")  # an absolute path to a real file
    with pytest.raises(HostError) as info:
        host.resolve("diffusion_models", name)
    assert "diffusion_models" in str(info.value)


def test_host_resolve_allows_inside_names(layout):
    host, base, _ = layout
    dm = (base / "models" / "diffusion_models").resolve()
    assert host.resolve("diffusion_models", "sub/inside.safetensors") == dm / "sub" / "inside.safetensors"
    # a link whose target stays inside the folder is fine (ComfyUI users symlink models around)
    assert host.resolve("diffusion_models", "link_in.safetensors") == dm / "sub" / "inside.safetensors"
    # ComfyUI-style confinement would also find this one; '..' that stays inside is harmless
    assert host.resolve("diffusion_models", "sub/../sub/inside.safetensors") == dm / "sub" / "inside.safetensors"


def test_list_files_hides_links_that_leave(layout):
    host, _, _ = layout
    listed = host.list_files("diffusion_models")
    assert "sub/inside.safetensors" in listed and "link_in.safetensors" in listed
    assert not any("far" in n or "link_out" in n or "outside" in n for n in listed), listed
    assert host.list_files("unet_segmentation") == []


def test_unknown_folder_is_refused(layout):
    from unet_lab.unet_core.errors import HostError

    host, _, _ = layout
    for folder in ("../models", "/", "diffusion_models/..", "output"):
        with pytest.raises(HostError):
            host.resolve(folder, "x.safetensors")


@pytest.mark.parametrize("name", ESCAPES[:4] + ["link_out.safetensors", "dir_out/far.safetensors", "/etc/passwd"])
def test_load_unet_node_refuses(layout, name):
    from unet_lab.nodes.diffusion import UNetLabLoadUNet
    from unet_lab.unet_core.errors import HostError

    with pytest.raises(HostError):
        UNetLabLoadUNet().load(name, "default", "auto")


def test_load_unet_node_loads_inside_file(layout):
    """Control: the same node loads the inside file (so the refusals above are about the path)."""

    model, info = load_unet_node("sub/inside.safetensors")
    assert isinstance(info, str) and info
    sd = tiny_unet_state_dict()
    loaded = model.diffusion_model.state_dict()
    assert torch.equal(loaded["input_blocks.0.0.weight"].float(), sd["input_blocks.0.0.weight"])


@pytest.mark.parametrize("file", ["diffusion_models/../outside.safetensors", "diffusion_models/../../outside.safetensors",
                                  "checkpoints/../outside.safetensors", "diffusion_models/link_out.safetensors",
                                  "diffusion_models//etc/passwd", "diffusion_models/dir_out/far.safetensors",
                                  "../outside.safetensors", "/etc/passwd"])
def test_inspect_node_refuses(layout, file):
    from unet_lab.nodes.diffusion import UNetLabInspectUNet
    from unet_lab.unet_core.errors import UNetLabError

    with pytest.raises(UNetLabError):
        UNetLabInspectUNet().inspect(file)


def test_inspect_node_reads_inside_file(layout):
    from unet_lab.nodes.diffusion import UNetLabInspectUNet

    report = node_result(UNetLabInspectUNet().inspect("diffusion_models/sub/inside.safetensors"))[0]
    assert report and "unet" in report.lower()


@pytest.mark.parametrize("name", ["../outside_seg.safetensors", "seg_link_out.safetensors", "/etc/passwd",
                                  "../../base/models/outside_seg.safetensors"])
def test_load_segmentation_node_refuses(layout, name):
    from unet_lab.nodes.segmentation import UNetLabLoadSegmentationUNet
    from unet_lab.unet_core.errors import HostError

    with pytest.raises(HostError):
        UNetLabLoadSegmentationUNet().load(name)


def test_save_prefixes_cannot_leave_the_folder(layout):
    """Save UNet / Save Segmentation U-Net / SaveImage refuse '..', absolute prefixes, and links out."""
    from unet_lab.nodes.diffusion import UNetLabSaveUNet
    from unet_lab.nodes.host.standalone_nodes import SaveImage
    from unet_lab.nodes.segmentation import UNetLabSaveSegmentationUNet
    from unet_lab.unet_core.errors import UNetLabError
    from unet_lab.unet_core.segmentation.checkpoint import SegmentationMeta
    from unet_lab.unet_core.segmentation.model import SegUNet

    host, base, tmp_path = layout
    model, _ = load_unet_node("sub/inside.safetensors")
    seg = tiny_seg_model()
    seg_unet = SegUNet(seg, SegmentationMeta.for_model(seg), "tiny")
    image = torch.rand(1, 8, 8, 3)
    (base / "output").mkdir(exist_ok=True)
    os.symlink(tmp_path / "elsewhere", base / "output" / "out_link")
    before = sorted(p.name for p in (tmp_path / "elsewhere").iterdir())
    for prefix in ("../x", "../../x", "/tmp/x", "a/../../x", str(tmp_path / "abs")):
        with pytest.raises(UNetLabError):
            UNetLabSaveUNet().save(model, prefix, "ldm", "keep")
        with pytest.raises(UNetLabError):
            UNetLabSaveSegmentationUNet().save(seg_unet, prefix)
        with pytest.raises(UNetLabError):
            SaveImage().save_images(image, prefix)
    with pytest.raises(UNetLabError):
        SaveImage().save_images(image, "out_link/img")
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == before
    assert not any(p.name.startswith(("x", "abs")) for p in tmp_path.rglob("*")), "a refused save wrote a file"


def test_save_unet_through_a_linked_subfolder(layout):
    """A sub-folder of models/diffusion_models that is a link to elsewhere must not receive the file."""
    from unet_lab.nodes.diffusion import UNetLabSaveUNet
    from unet_lab.unet_core.errors import UNetLabError

    host, base, tmp_path = layout
    model, _ = load_unet_node("sub/inside.safetensors")
    before = sorted(p.name for p in (tmp_path / "elsewhere").iterdir())
    with pytest.raises(UNetLabError, match="outside"):
        UNetLabSaveUNet().save(model, "dir_out/saved", "ldm", "keep")
    after = sorted(p.name for p in (tmp_path / "elsewhere").iterdir())
    assert after == before, f"Save UNet wrote through a link out of diffusion_models: {set(after) - set(before)}"


def test_save_segmentation_through_a_linked_subfolder(layout):
    from unet_lab.nodes.segmentation import UNetLabSaveSegmentationUNet
    from unet_lab.unet_core.errors import UNetLabError
    from unet_lab.unet_core.segmentation.checkpoint import SegmentationMeta
    from unet_lab.unet_core.segmentation.model import SegUNet

    host, base, tmp_path = layout
    os.symlink(tmp_path / "elsewhere", base / "models" / "unet_segmentation" / "seg_dir_out")
    seg = tiny_seg_model()
    before = sorted(p.name for p in (tmp_path / "elsewhere").iterdir())
    with pytest.raises(UNetLabError):
        UNetLabSaveSegmentationUNet().save(SegUNet(seg, SegmentationMeta.for_model(seg), "t"), "seg_dir_out/s")
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == before
