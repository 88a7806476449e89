"""Segment Folder's core in one process: masks equal segment()'s, resuming equals an uninterrupted run,
an interrupted write never leaves a truncated file, and bad folders fail before any model call."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_distributed import write_pictures
from unet_lab.unet_core.errors import InputError, SegmentationError
from unet_lab.unet_core.segmentation.inference import folder_files
from unet_lab.unet_core.segmentation.inference.folder import FolderSettings, read_folder_image, segment_folder
from unet_lab.unet_core.segmentation.inference.segment import SegmentOptions, segment
from unet_lab.unet_core.segmentation.meta import SegmentationMeta
from unet_lab.unet_core.segmentation.registry import build_model


class Stop(Exception):
    """Raised by a progress callback to interrupt a run."""


@pytest.fixture
def seg(tmp_path_factory):
    """An untrained seeded U-Net, its meta, and settings whose threshold is the median probability
    of the first test picture (so masks hold both classes)."""
    torch.manual_seed(4)
    model = build_model("unet", in_channels=3, out_channels=1, depth=2, base_channels=4).eval()
    meta = SegmentationMeta.for_model(model)
    first = write_pictures(tmp_path_factory.mktemp("probe"), 1)[0]
    probabilities = segment(model, meta, read_folder_image(first), tile_size=32, overlap=0.25).probabilities
    threshold = float(probabilities.median())
    options = SegmentOptions(tile_size=32, overlap=0.25, threshold=threshold)
    return model, meta, FolderSettings(options, probabilities=True, overlays=True)


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_masks_and_probabilities_are_segments_output(tmp_path, seg):
    model, meta, settings = seg
    pictures = write_pictures(tmp_path / "in", 3)
    result = segment_folder(model, meta, tmp_path / "in", tmp_path / "out", settings)
    assert [r.status for r in result.records] == ["segmented"] * 3
    for path, record in zip(pictures, result.records, strict=True):
        direct = segment(model, meta, read_folder_image(path), tile_size=32, overlap=0.25,
                         threshold=settings.segment.threshold)
        mask = np.asarray(Image.open(tmp_path / "out" / f"{path.stem}.png"))
        probability = np.asarray(Image.open(tmp_path / "out" / f"{path.stem}_probability.png"))
        assert np.array_equal(mask, np.round(direct.masks[0].numpy() * 255).astype(np.uint8))
        assert np.array_equal(probability.astype(np.int64),
                              np.round(direct.probabilities[0].numpy() * 65535).astype(np.int64))
        assert 0.0 < record.foreground < 1.0
        assert record.foreground == pytest.approx(float(direct.masks[0].mean()))
        assert Image.open(tmp_path / "out" / f"{path.stem}_overlay.png").size == (56, 40)
    assert "3 image(s): 3 segmented, 0 skipped" in result.table()


def test_resumed_run_writes_what_an_uninterrupted_one_writes(tmp_path, seg):
    model, meta, settings = seg
    write_pictures(tmp_path / "in", 5)
    segment_folder(model, meta, tmp_path / "in", tmp_path / "whole", settings)

    def stop_after_two(done, total, message=""):
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        segment_folder(model, meta, tmp_path / "in", tmp_path / "resumed", settings, progress=stop_after_two)
    assert len([p for p in (tmp_path / "resumed").iterdir() if p.suffix == ".png"]) == 6
    result = segment_folder(model, meta, tmp_path / "in", tmp_path / "resumed", settings)
    assert [r.status for r in result.records] == ["skipped"] * 2 + ["segmented"] * 3
    assert _files(tmp_path / "resumed") == _files(tmp_path / "whole")
    skipped = result.records[0]
    assert skipped.foreground == pytest.approx(
        float((np.asarray(Image.open(tmp_path / "whole" / "pic_000.png")) >= 128).mean()))


def test_a_write_cut_short_leaves_no_file_under_its_final_name(tmp_path, seg, monkeypatch):
    model, meta, settings = seg
    write_pictures(tmp_path / "in", 3)
    segment_folder(model, meta, tmp_path / "in", tmp_path / "whole", settings)
    real_replace = folder_files.os.replace
    calls = []

    def failing_replace(source, target):
        calls.append(target)
        if len(calls) == 5:  # the second image's overlay: its probability file is in, its mask not yet
            raise OSError("disk full")
        real_replace(source, target)

    monkeypatch.setattr(folder_files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        segment_folder(model, meta, tmp_path / "in", tmp_path / "cut", settings)
    monkeypatch.setattr(folder_files.os, "replace", real_replace)
    names = {p.name for p in (tmp_path / "cut").iterdir()}
    assert "pic_001_overlay.png" not in names and "pic_001.png" not in names
    assert ".pic_001_overlay.png.partial" in names  # the temp file, never the final name
    result = segment_folder(model, meta, tmp_path / "in", tmp_path / "cut", settings)
    assert [r.status for r in result.records] == ["skipped", "segmented", "segmented"]
    assert _files(tmp_path / "cut") == _files(tmp_path / "whole")
    assert not [p for p in (tmp_path / "cut").iterdir() if p.name.endswith(".partial")]


def test_redo_replaces_and_an_unreadable_image_is_reported_not_fatal(tmp_path, seg):
    model, meta, settings = seg
    write_pictures(tmp_path / "in", 2)
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    first = segment_folder(model, meta, tmp_path / "in", tmp_path / "out", settings)
    assert [r.status for r in first.records] == ["failed", "segmented", "segmented"]
    assert "broken.png" in first.records[0].note
    again = segment_folder(model, meta, tmp_path / "in", tmp_path / "out",
                           replace(settings, redo=True))
    assert [r.status for r in again.records] == ["failed", "segmented", "segmented"]
    assert b"broken.png,failed" in again.csv()


def test_bad_folders_and_settings_fail_before_any_model_call(tmp_path, seg):
    model, meta, settings = seg
    with pytest.raises(SegmentationError, match="does not exist"):
        segment_folder(model, meta, tmp_path / "missing", tmp_path / "out", settings)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegmentationError, match="no images"):
        segment_folder(model, meta, tmp_path / "empty", tmp_path / "out", settings)
    write_pictures(tmp_path / "twins", 1)
    Image.new("RGB", (8, 8)).save(tmp_path / "twins" / "pic_000.tif")
    with pytest.raises(SegmentationError, match="same mask pic_000.png"):
        segment_folder(model, meta, tmp_path / "twins", tmp_path / "out", settings)
    with pytest.raises(InputError, match="one mask per image"):
        segment_folder(model, meta, tmp_path / "twins", tmp_path / "out", FolderSettings(SegmentOptions(class_mode="all")))
