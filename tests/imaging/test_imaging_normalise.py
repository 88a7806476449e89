"""Channel choice, normalisation and label masks against the formulas written out with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_imaging import nuclei_like, save_stack
from unet_lab.unet_core.errors import InputError
from unet_lab.unet_core.imaging import labels_to_mask, normalise, read_image
from unet_lab.unet_core.imaging.reading import ImageStack


def _stack(pixels: np.ndarray, bits: int, kind: str = "uint") -> ImageStack:
    return ImageStack(pixels, bits, kind, "test", "TIFF", "/x/test.tif")


def test_none_divides_by_full_scale_and_keeps_16_bit_resolution(tmp_path):
    image, _ = nuclei_like()
    Image.fromarray(image).save(tmp_path / "n.png")
    result = normalise(read_image(tmp_path / "n.png"), "none")
    assert result.image.shape == (1, 48, 48, 3) and result.image.dtype == torch.float32
    expected = torch.from_numpy(image.astype(np.float32) / 65535.0)
    for c in range(3):
        torch.testing.assert_close(result.image[0, :, :, c], expected, rtol=0, atol=1e-7)
    assert result.image.max() < 1.0  # not clipped to white
    assert len(torch.unique(result.image)) > 256  # more levels than 8 bits hold


def test_min_max_and_percentile_per_channel_over_all_pages():
    rng = np.random.default_rng(2)
    pixels = rng.integers(100, 60000, (3, 10, 12, 2)).astype(np.uint16)
    flat = pixels.reshape(-1, 2).astype(np.float64)
    result = normalise(_stack(pixels, 16), "min-max", "all")
    for c in range(2):
        lo, hi = flat[:, c].min(), flat[:, c].max()
        np.testing.assert_allclose(result.image[..., c].numpy(), (pixels[..., c] - lo) / (hi - lo), atol=1e-6)
    assert float(result.image[..., 2].abs().max()) == 0.0  # two channels: third is zero
    result = normalise(_stack(pixels, 16), "percentile", "1", 2.0, 97.0)
    lo, hi = np.percentile(flat[:, 1], [2.0, 97.0])
    expected = np.clip((pixels[..., 1] - lo) / (hi - lo), 0, 1)
    for c in range(3):
        np.testing.assert_allclose(result.image[..., c].numpy(), expected, atol=1e-6)
    assert "channel 1" in result.describe()


def test_float_none_keeps_values_and_constant_channel_maps_to_zero():
    pixels = np.linspace(-1, 2, 24, dtype=np.float32).reshape(1, 4, 6, 1)
    result = normalise(_stack(pixels, 32, "float"), "none")
    np.testing.assert_allclose(result.image[0, :, :, 0].numpy(), pixels[0, :, :, 0])
    flat = normalise(_stack(np.full((1, 3, 3, 1), 7, np.uint16), 16), "min-max")
    assert float(flat.image.abs().max()) == 0.0


def test_bad_channel_and_percentiles_are_refused():
    pixels = np.zeros((1, 4, 4, 1), np.uint16)
    with pytest.raises(InputError, match="test.tif: channel 2 asked for, but the image has 1 channel"):
        normalise(_stack(pixels, 16), "none", "2")
    with pytest.raises(InputError, match="percentiles"):
        normalise(_stack(pixels, 16), "percentile", "all", 50.0, 10.0)


def test_labels_above_255_make_a_mask_and_a_class_mask(tmp_path):
    _, labels = nuclei_like()
    Image.fromarray(labels).save(tmp_path / "labels.png")
    stack = read_image(tmp_path / "labels.png")
    result = labels_to_mask(stack)
    assert result.mask.shape == (1, 48, 48)
    assert torch.equal(result.mask[0], torch.from_numpy((labels > 0).astype(np.float32)))
    assert result.label_count == len(np.unique(labels)) - 1
    one = labels_to_mask(stack, 302)
    assert torch.equal(one.mask[0], torch.from_numpy((labels == 302).astype(np.float32)))
    with pytest.raises(InputError, match=r"labels\.png: no pixel has label 9; labels present: 0, 301"):
        labels_to_mask(stack, 9)


def test_label_stack_and_colour_coded_labels(tmp_path):
    pages = [nuclei_like(seed=s)[1] for s in range(3)]
    result = labels_to_mask(read_image(save_stack(tmp_path / "l.tif", pages)))
    assert result.mask.shape == (3, 48, 48)
    assert torch.equal(result.mask, torch.from_numpy(np.stack(pages) > 0).float())
    colour = np.zeros((6, 6, 3), np.uint8)
    colour[:3, :3] = (255, 0, 0)
    colour[3:, 3:] = (0, 0, 255)
    Image.fromarray(colour).save(tmp_path / "c.png")
    result = labels_to_mask(read_image(tmp_path / "c.png"))
    assert result.label_count == 2 and float(result.mask.sum()) == 18
