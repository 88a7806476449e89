"""Reading scientific images at their own bit depth, and errors that name the file (files made by code)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fixtures_imaging import nuclei_like, png16_rgb, save_stack, truncated_copy
from unet_lab.unet_core.imaging import ImageReadError, read_image


def test_16_bit_png_and_tiff_keep_every_bit(tmp_path):
    image, _ = nuclei_like()
    for name in ("n.png", "n.tif"):
        Image.fromarray(image).save(tmp_path / name)
        stack = read_image(tmp_path / name)
        assert stack.pixels.dtype == np.uint16 and stack.bit_depth == 16 and stack.kind == "uint"
        assert stack.pixels.shape == (1, 48, 48, 1)
        assert np.array_equal(stack.pixels[0, :, :, 0], image)
        assert "16-bit" in stack.describe() and name in stack.describe()


def test_8_bit_rgb_float_and_bilevel(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    stack = read_image(tmp_path / "c.png")
    assert stack.bit_depth == 8 and np.array_equal(stack.pixels[0], rgb)
    values = np.linspace(-0.5, 3.0, 30, dtype=np.float32).reshape(5, 6)
    Image.fromarray(values).save(tmp_path / "f.tif")
    stack = read_image(tmp_path / "f.tif")
    assert stack.kind == "float" and np.array_equal(stack.pixels[0, :, :, 0], values)
    Image.fromarray(rgb[..., 0] > 128).save(tmp_path / "b.png")
    stack = read_image(tmp_path / "b.png")
    assert stack.bit_depth == 1 and set(np.unique(stack.pixels)) <= {0, 1}


def test_multi_page_tiff_is_a_stack_in_page_order(tmp_path):
    pages = [nuclei_like(seed=s)[0] for s in range(4)]
    stack = read_image(save_stack(tmp_path / "z.tif", pages))
    assert stack.pages == 4 and stack.pixels.shape == (4, 48, 48, 1)
    for index, page in enumerate(pages):
        assert np.array_equal(stack.pixels[index, :, :, 0], page)


def test_pages_of_different_sizes_are_refused(tmp_path):
    pages = [np.zeros((8, 8), np.uint16), np.zeros((6, 8), np.uint16)]
    with pytest.raises(ImageReadError, match=r"mixed\.tif: page 2 is 8x6"):
        read_image(save_stack(tmp_path / "mixed.tif", pages))


def test_16_bit_colour_png_is_refused_not_narrowed(tmp_path):
    pixels = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 1000).astype(np.uint16)
    with pytest.raises(ImageReadError, match=r"rgb16\.png: it is a 16-bit colour PNG; Pillow would keep only 8"):
        read_image(png16_rgb(tmp_path / "rgb16.png", pixels))


@pytest.mark.parametrize(("make", "cause"), [
    ("truncated", "truncated"),
    ("garbage", "not an image file"),
    ("empty", "empty"),
    ("missing", "no such file"),
    ("folder", "folder"),
])
def test_errors_name_the_file_and_the_cause(tmp_path, make, cause):
    image, _ = nuclei_like(size=96)
    Image.fromarray(image).save(tmp_path / "good.png")
    target = tmp_path / f"{make}.png"
    if make == "truncated":
        truncated_copy(tmp_path / "good.png", target)
    elif make == "garbage":
        target.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif make == "empty":
        target.write_bytes(b"")
    elif make == "folder":
        target.mkdir()
    with pytest.raises(ImageReadError) as caught:
        read_image(target)
    message = str(caught.value)
    assert message.startswith(f"{make}.png: ") and cause in message and str(target) in message


def test_truncated_tiff_and_damaged_png_body_name_the_file(tmp_path):
    pages = [nuclei_like(size=64, seed=s)[0] for s in range(3)]
    save_stack(tmp_path / "full.tif", pages)
    with pytest.raises(ImageReadError, match=r"^cut\.tif: "):
        read_image(truncated_copy(tmp_path / "full.tif", tmp_path / "cut.tif", 0.4))
    Image.fromarray(pages[0]).save(tmp_path / "ok.png")
    data = bytearray((tmp_path / "ok.png").read_bytes())
    data[60:80] = b"\xff" * 20  # corrupt the compressed image data
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"^bad\.png: "):
        read_image(tmp_path / "bad.png")
