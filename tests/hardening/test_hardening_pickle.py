"""Every pickle the pack reads goes through torch.load(weights_only=True): a malicious payload never runs.

The payload's ``__reduce__`` calls ``pathlib.Path.touch(marker)``. Each test first proves the
file is live (an unrestricted ``torch.load(weights_only=False)`` in a subprocess creates the
marker), then feeds it to one of the pack's readers (diffusion loader and sniffing, diffusers
``.bin`` folders, the segmentation loader with the milesial adapter, the LoRA loader, and the
nodes over them) and checks: a documented error names the file, and the marker never appears.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fixtures_hardening import MarkerPayload, make_host, malicious_pickle, tiny_milesial_state_dict

WRAPS = {
    "flat": lambda p: {"weight": torch.zeros(2), "payload": p},
    "state_dict": lambda p: {"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)},
                             "hook": p},
    "legacy_format": None,  # flat, written with the pre-zip serialisation
    "milesial": lambda p: {**tiny_milesial_state_dict(), "mask_values": p},
    "only_payload": lambda p: p,
}


def _make(tmp_path: Path, wrap: str, name: str) -> tuple[Path, Path]:
    marker = tmp_path / f"marker_{wrap}_{name.replace('/', '_')}"
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if wrap == "legacy_format":
        torch.save({"weight": torch.zeros(2), "payload": MarkerPayload(str(marker))}, str(path),
                   _use_new_zipfile_serialization=False)
    else:
        malicious_pickle(path, marker, WRAPS[wrap])
    return path, marker


def _prove_live(files: list[tuple[Path, Path]]) -> None:
    """An unrestricted torch.load, in a fresh interpreter, runs each payload (so each file is a real exploit)."""
    code = "import sys, torch\nfor p in sys.argv[1:]:\n    torch.load(p, weights_only=False)"
    subprocess.run([sys.executable, "-c", code, *(str(p) for p, _ in files)], check=False, capture_output=True,
                   timeout=120)
    for path, marker in files:
        assert marker.exists(), f"{path.name}: the payload did not run under an unrestricted torch.load"
        marker.unlink()


@pytest.fixture(scope="module")
def proven(tmp_path_factory):
    """One live-proof per payload variant (one subprocess for all: interpreters are slow to start)."""
    base = tmp_path_factory.mktemp("proof")
    _prove_live([_make(base, wrap, f"{wrap}.pt") for wrap in WRAPS])
    return set(WRAPS)


@pytest.mark.parametrize("wrap", ["flat", "state_dict", "legacy_format", "only_payload"])
@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_diffusion_readers_refuse(proven, tmp_path, wrap, suffix):
    from unet_lab.unet_core.checkpoints.loader import load_unet
    from unet_lab.unet_core.checkpoints.readers import load_pickle, load_state_dict
    from unet_lab.unet_core.checkpoints.sniff import sniff
    from unet_lab.unet_core.errors import CheckpointError

    assert wrap in proven
    path, marker = _make(tmp_path, wrap, f"model{suffix}")
    for reader in (load_pickle, load_state_dict, sniff, load_unet):
        with pytest.raises(CheckpointError) as info:
            reader(path)
        assert path.name in str(info.value)
        assert not marker.exists(), f"{reader.__name__} ran the payload"
    assert "refused" in str(info.value) or "not a readable" in str(info.value)


def test_diffusers_folder_bin_refused(proven, tmp_path):
    from unet_lab.unet_core.checkpoints.loader import load_unet
    from unet_lab.unet_core.checkpoints.readers import load_state_dict
    from unet_lab.unet_core.checkpoints.sniff import sniff
    from unet_lab.unet_core.errors import CheckpointError

    folder = tmp_path / "pipe" / "unet"
    path, marker = _make(tmp_path, "flat", "pipe/unet/diffusion_pytorch_model.bin")
    for reader in (load_state_dict, sniff, load_unet):
        with pytest.raises(CheckpointError):
            reader(folder)
        assert not marker.exists()


@pytest.mark.parametrize("wrap", ["flat", "milesial", "legacy_format", "only_payload"])
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".ckpt"])
def test_segmentation_loader_refuses(proven, tmp_path, wrap, suffix):
    from unet_lab.unet_core.errors import SegmentationError
    from unet_lab.unet_core.segmentation.checkpoint import load_segmentation

    path, marker = _make(tmp_path, wrap, f"seg{suffix}")
    with pytest.raises(SegmentationError) as info:
        load_segmentation(path)
    assert str(path) in str(info.value) and "weights_only" in str(info.value)
    assert not marker.exists()


def test_milesial_control_loads(tmp_path):
    """Control: the same milesial dict without the payload loads (the refusal is about the payload)."""
    from unet_lab.unet_core.segmentation.checkpoint import load_segmentation

    sd = tiny_milesial_state_dict()
    torch.save({**sd, "mask_values": [0, 1]}, str(tmp_path / "ok.pth"))
    model, meta = load_segmentation(tmp_path / "ok.pth")
    assert meta.source == "milesial" and meta.class_values == [0, 1]
    assert torch.equal(model.state_dict()["inc.double_conv.0.weight"], sd["inc.double_conv.0.weight"]) or \
        any(torch.equal(v, sd["inc.double_conv.0.weight"]) for v in model.state_dict().values())


@pytest.mark.parametrize("wrap", ["flat", "state_dict", "legacy_format", "only_payload"])
def test_lora_loader_refuses(proven, tmp_path, wrap):
    from unet_lab.unet_core.errors import LoraError
    from unet_lab.unet_core.lora.formats import load_lora_file

    path, marker = _make(tmp_path, wrap, "lora.pt")
    with pytest.raises(LoraError) as info:
        load_lora_file(path)
    assert "lora.pt" in str(info.value)
    assert not marker.exists()


def test_nodes_refuse_malicious_files(proven, tmp_path):
    """Through the nodes and the executor: Load UNet (.ckpt) and Load Segmentation U-Net (.pth)."""
    from unet_lab.nodes.diffusion import UNetLabInspectUNet, UNetLabLoadUNet
    from unet_lab.nodes.host import use_host
    from unet_lab.nodes.segmentation import UNetLabLoadSegmentationUNet
    from unet_lab.unet_core.errors import UNetLabError

    base = tmp_path / "base"
    host = make_host(base)
    dm = base / "models" / "diffusion_models"
    seg = base / "models" / "unet_segmentation"
    ckpt, m1 = _make(dm, "state_dict", "evil.ckpt")
    pth, m2 = _make(seg, "milesial", "evil.pth")
    with use_host(host):
        assert "evil.ckpt" in host.list_files("diffusion_models")
        with pytest.raises(UNetLabError):
            UNetLabLoadUNet().load("evil.ckpt", "default", "auto")
        with pytest.raises(UNetLabError):
            UNetLabInspectUNet().inspect("diffusion_models/evil.ckpt")
        with pytest.raises(UNetLabError):
            UNetLabLoadSegmentationUNet().load("evil.pth")
    assert not m1.exists() and not m2.exists()
