"""Read scientific images (8/16-bit and float PNG/TIFF, multi-page TIFF) into numpy at their own bit depth.

``read_image(path)`` returns an :class:`ImageStack`: every page of the file as
``pixels [pages, H, W, C]`` in the file's own sample type (uint8, uint16, int32 or float32),
never scaled or clipped, with the bit depth the file declares. Pages of another size than the
first, or another sample layout, are refused (a z-stack or time series has one size).

Pillow reads the file. Pillow has no 16-bit colour mode: it would keep only the top 8 bits of a
16-bit RGB PNG or TIFF. Such files are refused with a message that says so (or read with
``tifffile`` when it is installed, for TIFF), never narrowed silently.

Every failure raises :class:`~..errors.ImageReadError` naming the file and the cause in plain
words (missing, a folder, empty, truncated, not an image, damaged).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from ..errors import InputError

log = logging.getLogger(__name__)

# Pillow mode -> (numpy sample type, bit depth, sample kind)
_MODES: dict[str, tuple[type, int, str]] = {
    "1": (np.uint8, 1, "uint"),
    "L": (np.uint8, 8, "uint"),
    "LA": (np.uint8, 8, "uint"),
    "RGB": (np.uint8, 8, "uint"),
    "RGBA": (np.uint8, 8, "uint"),
    "I;16": (np.uint16, 16, "uint"),
    "I;16L": (np.uint16, 16, "uint"),
    "I;16B": (np.uint16, 16, "uint"),
    "I;16N": (np.uint16, 16, "uint"),
    "I": (np.int32, 32, "int"),
    "F": (np.float32, 32, "float"),
}
# Modes converted to RGB (or RGBA) first: palette, CMYK, YCbCr, LAB, HSV.
_TO_RGB = {"P": "RGBA", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


class ImageReadError(InputError):
    """An image file cannot be read; the message names the file and the cause."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path, self.cause = str(path), cause
        super().__init__(f"{Path(path).name}: {cause} (file: {path})")


@dataclass
class ImageStack:
    """The pages of one image file at their own bit depth.

    ``pixels``: [pages, H, W, C] in the file's sample type (uint8/uint16/int32/float32);
    ``bit_depth``: bits per sample the file declares (1, 8, 16 or 32); ``kind``: "uint", "int"
    or "float"; ``mode``: Pillow's mode of the first page; ``path``: where it came from.
    """

    pixels: np.ndarray
    bit_depth: int
    kind: str
    mode: str
    format: str
    path: str

    @property
    def pages(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[-1])

    def full_scale(self) -> float:
        """The largest value the sample type can hold (1.0 for float): what "none" divides by."""
        if self.kind == "float":
            return 1.0
        if self.bit_depth == 1:
            return 1.0
        return float(2 ** self.bit_depth - 1)

    def describe(self) -> str:
        """One line: name, pages, size, channels, bit depth and the value range found."""
        pages, height, width, channels = self.pixels.shape
        low, high = (float(self.pixels.min()), float(self.pixels.max())) if self.pixels.size else (0.0, 0.0)
        kind = "float" if self.kind == "float" else f"{self.bit_depth}-bit"
        fmt = (f"{low:g}..{high:g}") if self.kind == "float" else f"{int(low)}..{int(high)}"
        return (f"{Path(self.path).name}: {self.format or 'image'}, {pages} page(s) of {width}x{height}, "
                f"{channels} channel(s), {kind} ({self.mode}), values {fmt}")


def _png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None when the file is no PNG."""
    with open(path, "rb") as handle:
        head = handle.read(33)
    if len(head) < 33 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _declared_bits(picture: Image.Image, path: Path) -> int | None:
    """Bits per sample the file declares (PNG IHDR, TIFF BitsPerSample), when it says."""
    if picture.format == "PNG":
        header = _png_header(path)
        return None if header is None else header[0]
    if picture.format == "TIFF":
        bits = getattr(picture, "tag_v2", {}).get(258)
        if isinstance(bits, tuple | list):
            return max(int(b) for b in bits) if bits else None
        return None if bits is None else int(bits)
    return None


def _read_with_tifffile(path: Path) -> np.ndarray | None:
    """All pages [pages, H, W, C] through tifffile when it is installed, else None."""
    try:
        import tifffile  # optional: reads 16-bit colour TIFFs that Pillow cannot
    except ImportError:
        return None
    data = np.asarray(tifffile.imread(str(path)))
    if data.ndim == 2:
        data = data[None, :, :, None]
    elif data.ndim == 3:
        data = data[None] if data.shape[-1] in (3, 4) else data[..., None]
    if data.ndim != 4:
        raise ImageReadError(path, f"a TIFF of shape {data.shape} is not a stack of 2-D pages")
    return data


def _page_array(frame: Image.Image, path: Path) -> np.ndarray:
    mode = frame.mode
    if mode in _TO_RGB:
        frame = frame.convert(_TO_RGB[mode])
        mode = frame.mode
    if mode not in _MODES:
        raise ImageReadError(path, f"its pixel mode {mode!r} is not supported; save it as 8/16-bit or float "
                                   "grayscale, RGB or RGBA")
    dtype = _MODES[mode][0]
    array = np.asarray(frame)
    if mode == "1":
        array = array.astype(np.uint8)
    array = array.astype(dtype, copy=False)
    return array[:, :, None] if array.ndim == 2 else array


def _describe_failure(error: BaseException) -> str:
    text = str(error)
    if isinstance(error, UnidentifiedImageError):
        return "it is not an image file Pillow can read (unknown format, or not an image at all)"
    if "truncated" in text.lower():
        return "the file is truncated: it ends before the image data does (copy or save it again)"
    return f"the image data is damaged or unreadable ({type(error).__name__}: {text or 'no detail'})"


def read_image(path: str | Path) -> ImageStack:
    """Every page of an image file at its own bit depth (see the module docstring); ImageReadError if unreadable."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if path.is_dir():
        raise ImageReadError(path, "this is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "the file is empty (0 bytes)")
    try:
        picture = Image.open(path)
    except Exception as error:  # noqa: BLE001 - Pillow raises many types on damaged data; all name the file
        raise ImageReadError(path, _describe_failure(error)) from None
    with picture:
        fmt = picture.format or ""
        bits = _declared_bits(picture, path)
        wide_colour = bits is not None and bits > 8 and picture.mode in ("RGB", "RGBA", "LA", "P")
        if wide_colour:
            data = _read_with_tifffile(path) if fmt == "TIFF" else None
            if data is None:
                raise ImageReadError(path, f"it is a {bits}-bit colour {fmt or 'image'}; Pillow would keep only 8 "
                                           "of its bits, so it is refused rather than narrowed. Save the channels "
                                           "as a 16-bit grayscale multi-page TIFF or separate 16-bit grayscale "
                                           "PNGs" + (" (or install tifffile)" if fmt == "TIFF" else ""))
            kind = "float" if data.dtype.kind == "f" else ("int" if data.dtype.kind == "i" else "uint")
            return ImageStack(data, data.dtype.itemsize * 8, kind, picture.mode, fmt, str(path))
        pages: list[np.ndarray] = []
        try:
            for frame in ImageSequence.Iterator(picture):
                frame.load()
                pages.append(_page_array(frame, path))
        except ImageReadError:
            raise
        except Exception as error:  # noqa: BLE001 - as above: damaged data surfaces as many error types
            raise ImageReadError(path, _describe_failure(error)) from None
        first_mode = picture.mode if picture.mode not in _TO_RGB else _TO_RGB[picture.mode]
    shape, dtype = pages[0].shape, pages[0].dtype
    for number, page in enumerate(pages[1:], start=2):
        if page.shape != shape or page.dtype != dtype:
            raise ImageReadError(path, f"page {number} is {page.shape[1]}x{page.shape[0]} {page.dtype} but page 1 "
                                       f"is {shape[1]}x{shape[0]} {dtype}; a stack needs pages of one size and type")
    _, depth, kind = _MODES[first_mode]
    if kind == "int" and bits in (8, 16):
        depth = bits  # Pillow opens some 16-bit grayscale files as 32-bit "I"
    return ImageStack(np.stack(pages), depth, kind, picture.mode, fmt, str(path))
