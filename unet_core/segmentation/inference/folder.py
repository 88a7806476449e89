"""Segment every image of a folder into mask files; resumable, and sharded over torchrun ranks.

``segment_folder`` lists the folder's images (sorted), skips those whose outputs all exist
(unless ``redo``), and segments the rest one image at a time with :func:`.segment.segment`,
writing ``<stem>.png`` (mask, 0/255), optionally ``<stem>_probability.png`` (16-bit, 0..1
scaled to 0..65535) and ``<stem>_overlay.png`` atomically (see :mod:`.folder_files`).

Under a torchrun job, rank 0 decides the list of images to do and shares it, each rank
takes its round-robin share, and the per-image records are gathered to every rank; the
caller writes the summary on rank 0 only. Each image is segmented alone, so its mask does
not depend on the number of ranks or on which images were done before: a resumed or
sharded run writes the same bytes as one uninterrupted single-process run.

An image that cannot be read is recorded as failed (with the reason) and the run goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ... import distributed
from ...errors import InputError, UNetLabError
from ...progress import ProgressCallback, no_progress
from ..training.data import read_image
from .folder_files import (
    is_done,
    list_images,
    mask_foreground,
    output_paths,
    png_bytes,
    remove_partials,
    summary_csv,
    write_atomic,
)
from .outputs import overlay
from .segment import SegmentOptions, segment

log = logging.getLogger(__name__)

ImageReader = Callable[[Path], torch.Tensor]


def read_folder_image(path: Path) -> torch.Tensor:
    """An image file as IMAGE [1, H, W, 3] float 0..1 (the one place that picks the reader)."""
    return read_image(path).unsqueeze(0)


@dataclass(frozen=True)
class FolderSettings:
    """How each image is segmented (``segment``'s options; its device, progress and input name are
    set per image) and what is written."""

    segment: SegmentOptions = field(default_factory=SegmentOptions)
    probabilities: bool = False
    overlays: bool = False
    redo: bool = False

    def kinds(self) -> tuple[str, ...]:
        return ("mask",) + (("probability",) if self.probabilities else ()) + (("overlay",) if self.overlays else ())


@dataclass
class ImageRecord:
    """One image's line in the summary."""

    image: str
    status: str            # "segmented", "skipped" (done by an earlier run) or "failed"
    width: int = 0
    height: int = 0
    seconds: float = 0.0
    foreground: float | None = None
    rank: int = 0
    note: str = ""


@dataclass
class FolderResult:
    """Every image's record (sorted by name), the wall time and the number of ranks."""

    records: list[ImageRecord]
    seconds: float
    ranks: int

    def count(self, status: str) -> int:
        return sum(1 for record in self.records if record.status == status)

    def csv(self) -> bytes:
        return summary_csv([{**asdict(r), "seconds": f"{r.seconds:.3f}",
                             "foreground": "" if r.foreground is None else f"{r.foreground:.6f}"}
                            for r in self.records])

    def table(self, limit: int = 20) -> str:
        """A text summary: counts and time, then up to ``limit`` image rows."""
        done = self.count("segmented")
        rate = f", {done / self.seconds:.2f} image(s)/s" if done and self.seconds > 0 else ""
        lines = [f"{len(self.records)} image(s): {done} segmented, {self.count('skipped')} skipped (done before), "
                 f"{self.count('failed')} failed; {self.seconds:.2f} s on {self.ranks} rank(s){rate}",
                 f"{'image':<32} {'status':<10} {'size':>11} {'seconds':>8} {'foreground':>10}"]
        for record in self.records[:limit]:
            share = "" if record.foreground is None else f"{100.0 * record.foreground:9.2f}%"
            size = f"{record.width}x{record.height}" if record.width else ""
            lines.append(f"{record.image[:32]:<32} {record.status:<10} {size:>11} {record.seconds:8.2f} {share:>10}")
            if record.note:
                lines.append(f"    {record.note}")
        if len(self.records) > limit:
            lines.append(f"... and {len(self.records) - limit} more (see the summary CSV)")
        return "\n".join(lines)


def _plan(images: list[Path], output: Path, settings: FolderSettings) -> tuple[list[str], list[str]]:
    """(names to segment, names already done), in name order."""
    todo, done = [], []
    for path in images:
        paths = output_paths(output, path.stem, settings.kinds())
        (done if is_done(paths) and not settings.redo else todo).append(path.name)
    return todo, done


def _segment_one(model: nn.Module, meta: Any, path: Path, output: Path, settings: FolderSettings,
                 device: torch.device, reader: ImageReader, rank: int) -> ImageRecord:
    start = time.perf_counter()
    paths = output_paths(output, path.stem, settings.kinds())
    remove_partials(paths)
    try:
        image = reader(path)
    except UNetLabError as error:
        log.warning("Segment Folder: %s skipped: %s", path.name, error)
        return ImageRecord(path.name, "failed", rank=rank, note=str(error))
    result = segment(model, meta, image, settings.segment, device=device, input_name=path.name, progress=None)
    mask = result.masks[0]
    if "probability" in paths:
        write_atomic(paths["probability"], png_bytes(result.probabilities[0], bits=16))
    if "overlay" in paths:
        write_atomic(paths["overlay"], png_bytes(overlay(image, result.masks, result.plane_names)[0], bits=8))
    write_atomic(paths["mask"], png_bytes(mask, bits=8))  # last: its presence marks the image done
    return ImageRecord(path.name, "segmented", width=int(image.shape[2]), height=int(image.shape[1]),
                       seconds=time.perf_counter() - start, foreground=float(mask.mean()), rank=rank)


def segment_folder(model: nn.Module, meta: Any, input_dir: Path, output_dir: Path, settings: FolderSettings,
                   device: torch.device | str = "cpu", progress: ProgressCallback | None = None,
                   reader: ImageReader = read_folder_image) -> FolderResult:
    """Segment the images of ``input_dir`` into ``output_dir`` (see the module docstring).

    Checks the settings and lists the folder before any model call; ``progress`` counts this
    rank's images. Returns the same :class:`FolderResult` on every rank.
    """
    if settings.segment.class_mode.strip().lower() == "all":
        raise InputError("Segment Folder writes one mask per image: class_mode 'foreground' or 'class:<name>', "
                         "not 'all'")
    start = time.perf_counter()
    context = distributed.active()
    rank, world = (context.rank, context.world_size) if context else (0, 1)
    images = {path.name: path for path in list_images(Path(input_dir))}
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    todo, done = distributed.broadcast_object(_plan(list(images.values()), output, settings) if rank == 0 else None,
                                              what="sharing the Segment Folder work list")
    mine = distributed.shard(todo, rank, world)
    report = progress or no_progress
    device = torch.device(device)
    records: list[ImageRecord] = []
    with torch.inference_mode():
        for index, name in enumerate(mine):
            records.append(_segment_one(model, meta, images[name], output, settings, device, reader, rank))
            report(index + 1, len(mine), name)
    if rank == 0:
        for name in done:
            paths = output_paths(output, Path(name).stem, ("mask",))
            records.append(ImageRecord(name, "skipped", foreground=mask_foreground(paths["mask"])))
    gathered = distributed.all_gather_objects(records, what="gathering the Segment Folder records")
    everything = sorted((record for part in gathered for record in part), key=lambda record: record.image)
    return FolderResult(everything, time.perf_counter() - start, world)
