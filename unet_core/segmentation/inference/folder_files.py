"""Files of a Segment Folder run: the input list, output names, atomic PNG writes, the summary CSV.

An output file is written to a hidden ``.<name>.partial`` file in the same folder and
renamed over its final name (``os.replace``, atomic on POSIX and Windows), so a final name
only ever holds a complete file; an interrupted run leaves at most ``.partial`` files,
which the next run deletes before redoing that image.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...errors import SegmentationError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
OUTPUT_KINDS = ("mask", "probability", "overlay")
SUMMARY_NAME = "segment_folder_summary.csv"


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name; SegmentationError when none or two share a stem."""
    if not folder.is_dir():
        raise SegmentationError(f"Segment Folder: input folder {folder} does not exist")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                    and not p.name.startswith("."))
    if not images:
        raise SegmentationError(f"Segment Folder: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:
            raise SegmentationError(f"Segment Folder: {stems[path.stem].name} and {path.name} in {folder} would "
                                    f"write the same mask {path.stem}.png; rename one")
        stems[path.stem] = path
    return images


def output_paths(output: Path, stem: str, kinds: tuple[str, ...]) -> dict[str, Path]:
    """Where each kind of output of the image ``stem`` goes: ``<stem>.png``, ``<stem>_probability.png``, ..."""
    return {kind: output / (f"{stem}.png" if kind == "mask" else f"{stem}_{kind}.png") for kind in kinds}


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def is_done(paths: dict[str, Path]) -> bool:
    """True when every output of an image exists (complete, by the atomic writes)."""
    return all(path.is_file() for path in paths.values())


def remove_partials(paths: dict[str, Path]) -> None:
    """Delete what an interrupted run left of these outputs."""
    for path in paths.values():
        partial_path(path).unlink(missing_ok=True)


def write_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a same-folder temp file and a rename (flushed to disk first)."""
    temporary = partial_path(path)
    with open(temporary, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def png_bytes(plane: torch.Tensor, bits: int) -> bytes:
    """A [H, W] (grey) or [H, W, 3] (colour) tensor in 0..1 as PNG bytes, 8 or 16 bits per sample."""
    values = plane.detach().float().clamp(0, 1).cpu().numpy()
    if bits == 16:
        picture = Image.fromarray(np.round(values * 65535.0).astype(np.uint16))
    else:
        picture = Image.fromarray(np.round(values * 255.0).astype(np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def mask_foreground(path: Path) -> float:
    """The foreground share of a written mask file (pixels above half scale)."""
    with Image.open(path) as picture:
        values = np.asarray(picture.convert("L"))
    return float((values >= 128).mean()) if values.size else 0.0


def summary_csv(rows: list[dict[str, object]]) -> bytes:
    """The summary table as CSV bytes, one row per image."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["image", "status", "width", "height", "seconds", "foreground",
                                                "rank", "note"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()
