"""Image files made by code for the imaging tests: 8/16-bit and float PNG/TIFF, stacks, damaged files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def nuclei_like(size: int = 48, seed: int = 0, peak: int = 40000) -> tuple[np.ndarray, np.ndarray]:
    """A 16-bit fluorescence-like image (bright discs on a dim, noisy background) and its instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    labels = np.zeros((size, size), np.uint16)
    image = rng.normal(800, 60, (size, size))
    for k in range(1, 7):
        r = rng.uniform(4, 7)
        cy, cx = rng.uniform(r, size - r, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        new = disc & (labels == 0)
        labels[new] = 300 + k  # ids above 255, as 16-bit label images have
        image[new] += rng.uniform(0.4, 1.0) * peak
    return np.clip(image, 0, 65535).astype(np.uint16), labels


def save_stack(path: Path, pages: list[np.ndarray]) -> Path:
    """A multi-page TIFF of 2-D arrays (Pillow)."""
    frames = [Image.fromarray(p) for p in pages]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


def png16_rgb(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one): filter 0 rows, one IDAT."""
    height, width, _ = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    big = pixels.astype(">u2")
    raw = b"".join(b"\x00" + big[y].tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def truncated_copy(source: Path, target: Path, keep: float = 0.5) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target
