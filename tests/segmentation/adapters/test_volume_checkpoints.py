"""Reading 3D and U-Net 3+ checkpoints through ``load_segmentation``: foreign files and our own format.

The foreign files are written here the way their projects write them (``torch.save`` of a dict
with ``model_state_dict`` for pytorch-3dunet, a bare state dict for MONAI and the U-Net 3+
authors, ``module.``-prefixed for DataParallel) from the recorded reference fixtures, and read
back with ``weights_only=True`` by the pack.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unet_lab.unet_core.errors import SegmentationError
from unet_lab.unet_core.segmentation.checkpoint import load_segmentation, save_segmentation
from unet_lab.unet_core.segmentation.inference.volume import segment_volume
from unet_lab.unet_core.segmentation.meta import SegmentationMeta
from unet_lab.unet_core.segmentation.registry import build_model, is_volume_architecture

DATA = Path(__file__).resolve().parents[2] / "data"


def _prefixed(data: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 7:]: v for k, v in data.items() if k.startswith(f"{prefix}.state.")}


def test_pytorch3dunet_checkpoint_dict_loads_and_matches_its_recorded_output(tmp_path):
    data = load_file(DATA / "pytorch3dunet_reference.safetensors")
    path = tmp_path / "best_checkpoint.pytorch"
    torch.save({"model_state_dict": _prefixed(data, "unet3d"), "epoch": 3, "best_eval_score": 0.9}, path)
    model, meta = load_segmentation(path)
    assert meta.source == "pytorch-3dunet" and is_volume_architecture(model.config["architecture"])
    assert model.config["num_groups"] == 4  # 8 (the library default) cannot split the 12-channel norms
    with torch.no_grad():
        torch.testing.assert_close(model(data["unet3d.input"]), data["unet3d.logits"], atol=1e-5, rtol=0)

def test_unet3plus_authors_data_parallel_file_loads(tmp_path):
    data = load_file(DATA / "unet3plus_reference.safetensors")
    path = tmp_path / "unet3plus.pth"
    torch.save({"module." + k: v for k, v in _prefixed(data, "deepsup").items()}, path)
    model, meta = load_segmentation(path)
    assert model.config["architecture"] == "unet3plus" and model.config["deep_supervision"]
    with torch.no_grad():
        torch.testing.assert_close(model(data["deepsup.input"]), data["deepsup.logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,hp", [
    ("unet3d", dict(depth=2, base_channels=4, pool_z=[False, True], upsampling="trilinear", residual=True)),
    ("unet3plus", dict(depth=2, base_channels=4, deep_supervision=True, classification_guided=True)),
    ("pytorch3dunet", dict(f_maps=[4, 8], num_groups=4, variant="ResidualUNet3D")),
    ("monai_unet", dict(channels=[4, 8, 8], strides=[2, 2], num_res_units=1)),
])
def test_our_format_round_trips(tmp_path, arch, hp):
    torch.manual_seed(0)
    model = build_model(arch, **hp).eval()
    path = tmp_path / f"{arch}.safetensors"
    save_segmentation(path, model, SegmentationMeta.for_model(model))
    loaded, meta = load_segmentation(path)
    assert loaded.config == model.config and meta.architecture == arch
    shape = (1, model.in_channels, 8, 16, 16) if is_volume_architecture(arch) else (1, 3, 20, 24)
    x = torch.rand(*shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_2d_checkpoint_offered_as_volume_names_both(tmp_path):
    model = build_model("unet", depth=1, base_channels=2, in_channels=1)
    path = tmp_path / "flat.safetensors"
    save_segmentation(path, model, SegmentationMeta.for_model(model))
    loaded, meta = load_segmentation(path)
    with pytest.raises(SegmentationError, match="2D unet but the input is a volume"):
        segment_volume(loaded, meta, torch.rand(4, 16, 16, 3))
