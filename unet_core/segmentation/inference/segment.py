"""Segment IMAGE batches with a segmentation U-Net: checks, planning, tiled runs with retry.

``segment`` takes ComfyUI's IMAGE ([B, H, W, C] float 0..1) and returns probabilities and
binary masks as [N, H, W] float32 at the input size (N = B, or B x classes for ``"all"``). It
runs in three steps:

1. preparation (:func:`prepare_job`): options, image shape and channels, class mode, threshold
   and the checkpoint's normalisation are checked, and the device and speed resolved, before
   any pixel is read (input handling: :mod:`.images`; class modes: :mod:`.classes`);
2. planning (:func:`plan_job`): the tile plan and the host memory the outputs and buffers
   need; the request is refused up front, with the sizes, when that exceeds the free host memory;
3. the run (:func:`run_with_retry`): each image is tiled (:mod:`.tiling`); on an out-of-memory
   error an automatically chosen tile batch is halved first, then the tile size, down to
   ``MIN_TILE`` (or the model's size divisor), and the image is redone.

Normalisation is the checkpoint's: ``(x - mean) / std`` per channel from ``meta.normalization``.
One output channel means a sigmoid (binary), several a softmax over classes. Tiny images (even
1 x 1) are padded by the model to its size divisor and cropped back.

On a GPU the work stays there (:mod:`.device_io`): the IMAGE batch is copied to the device once
when it fits (else one tile row at a time), its values are checked there, each tile row is
normalised once and its tiles are sliced, batched and blended on the device, and finished rows
come back through a pinned buffer while the next row computes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from ...compiling import is_out_of_memory
from ...errors import InputError, SegmentationError
from ...memory import available_ram
from ...progress import ProgressCallback, no_progress
from ..meta import meta_field
from ..model import model_channels
from .classes import class_planes, resolve_class_mode
from .device_io import DEFAULT_TILE_BATCH, RowWriter, auto_tile_batch, device_copy, resolve_speed
from .images import InputPlan, inspect_images, to_model_input
from .predictor import make_predictor
from .tiling import BLENDS, TilePlan, plan_tiles, run_tiled, working_bytes

log = logging.getLogger(__name__)

MIN_TILE = 32
HOST_MEMORY_SHARE = 0.9  # of the free host memory that one run may plan to use


@dataclass(frozen=True)
class SegmentOptions:
    """How to segment: every setting of :func:`segment` besides the model, its meta and the images.

    ``tile_size`` px tiles overlapping by ``overlap`` (0 <= overlap < 1), blended by ``blend``
    (:data:`.tiling.BLENDS`); ``tta_flips``: mean over the four flips; ``threshold``: the mask
    threshold (None: the checkpoint's, else 0.5); ``class_mode``: see :mod:`.classes`;
    ``device``: where the model runs (None: the model's device); ``progress``: called per tile;
    ``input_name``: the node input named in errors; ``tile_batch``: tiles per model call (None:
    4 on the CPU, from a memory estimate on CUDA); ``free_memory``: free host bytes (None: the
    OS's available memory); ``extra_output_bytes``: host bytes the caller adds to the outputs
    (e.g. an overlay image); ``release_memory``: called after the run and after each
    out-of-memory error (accelerator caches); ``speed``: "exact" (as stored), "fast" (folded
    norms, channels_last, bf16 autocast on CUDA), "compiled" (fast + torch.compile) or "auto"
    ("fast" on CUDA, "exact" elsewhere); see :func:`.predictor.make_predictor`.
    """

    tile_size: int = 512
    overlap: float = 0.25
    blend: str = "gaussian"
    tta_flips: bool = False
    threshold: float | None = None
    class_mode: str = "foreground"
    device: torch.device | str | None = None
    progress: ProgressCallback | None = None
    input_name: str = "image"
    tile_batch: int | None = None
    free_memory: int | None = None
    extra_output_bytes: int = 0
    release_memory: Callable[[], None] | None = None
    speed: str = "exact"

    def check(self) -> None:
        """InputError for a setting out of range (before anything is read or planned)."""
        if self.blend not in BLENDS:
            raise InputError(f"blend {self.blend!r}: expected one of {list(BLENDS)}")
        if not 0.0 <= self.overlap < 1.0:
            raise InputError(f"overlap {self.overlap}: expected 0 <= overlap < 1")
        if self.tile_size < 1:
            raise InputError(f"tile_size {self.tile_size}: expected a positive number of pixels")
        if self.tile_batch is not None and int(self.tile_batch) < 1:
            raise InputError(f"tile_batch {self.tile_batch}: expected at least 1 tile per model call")


SEGMENT_OPTION_NAMES: frozenset[str] = frozenset(f.name for f in fields(SegmentOptions))


@dataclass
class SegmentationResult:
    """Probabilities and masks [N, H, W] float32 in [0, 1]; ``plane_names`` names each of the N planes."""

    probabilities: torch.Tensor
    masks: torch.Tensor
    plane_names: list[str]
    class_names: list[str]
    tile_size: int
    tiles: int
    warnings: list[str] = field(default_factory=list)
    tile_batch: int = 1  # tiles per model call
    speed: str = "exact"  # how the model ran (see make_predictor)


@dataclass
class SegmentJob:
    """What preparation settles: channels, classes, class choice, threshold, normalisation, device, speed."""

    in_channels: int
    classes: int
    class_names: list[str]
    mode: str
    index: int | None
    threshold: float
    explicit_threshold: bool
    mean: torch.Tensor
    std: torch.Tensor
    divisor: int
    planes: int
    device: torch.device
    speed: str

    def to_planes(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities [K, h, w] -> (probability planes, mask planes) [P, h, w]."""
        return class_planes(probs, self.mode, self.index, self.threshold, self.explicit_threshold)

    def plane_names(self, batch: int) -> list[str]:
        """The name of each output plane, image-major."""
        if self.planes > 1:
            return [self.class_names[k] for _ in range(batch) for k in range(self.planes)]
        return [("foreground" if self.mode == "foreground" else self.class_names[self.index or 0])] * batch


def _normalization(meta: Any, in_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    norm = meta_field(meta, "normalization", None) or {}
    mean = torch.tensor(norm.get("mean", [0.0] * in_channels), dtype=torch.float32).reshape(-1)
    std = torch.tensor(norm.get("std", [1.0] * in_channels), dtype=torch.float32).reshape(-1)
    if mean.numel() == 1:
        mean = mean.expand(in_channels)
    if std.numel() == 1:
        std = std.expand(in_channels)
    if mean.numel() != in_channels or std.numel() != in_channels or bool((std <= 0).any()):
        raise SegmentationError(f"checkpoint normalisation mean={mean.tolist()} std={std.tolist()} does not fit "
                                f"a {in_channels}-channel model")
    return mean, std


def prepare_job(model: nn.Module, meta: Any, images: torch.Tensor, options: SegmentOptions) -> SegmentJob:
    """Check the options, the images' shape and channels and the checkpoint meta; nothing is read or run."""
    options.check()
    if int(getattr(model, "spatial_dims", 2)) == 3:
        arch = (getattr(model, "config", None) or {}).get("architecture", type(model).__name__)
        raise SegmentationError(f"the model is a 3D {arch} (for volumes) but the input is a 2D image batch; "
                                "use Segment Volume")
    in_channels, classes = model_channels(model)
    inspect_images(images, in_channels, options.input_name, values=False)  # shape first: cheap
    names = list(meta_field(meta, "class_names", None) or [])
    if len(names) != max(classes, 1) or not names:
        names = ["foreground"] if classes == 1 else [f"class_{k}" for k in range(classes)]
    mode, index = resolve_class_mode(options.class_mode, classes, names)
    explicit = options.threshold is not None
    threshold = float(options.threshold if explicit else meta_field(meta, "threshold", 0.5) or 0.5)
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold {threshold}: expected a value in 0..1")
    mean, std = _normalization(meta, in_channels)
    device = torch.device(options.device) if options.device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    return SegmentJob(in_channels, classes, names, mode, index, threshold, explicit, mean, std,
                      divisor=int(getattr(model, "size_divisor", 1) or 1),
                      planes=classes if (mode == "all" and classes > 1) else 1,
                      device=device, speed=resolve_speed(options.speed, device))


def plan_job(job: SegmentJob, images: torch.Tensor, options: SegmentOptions) -> TilePlan:
    """The tile plan; InputError, with the sizes, when outputs and buffers would not fit in host memory."""
    batch, height, width, _ = images.shape
    plan = plan_tiles(height, width, max(int(options.tile_size), job.divisor), options.overlap, job.divisor)
    output_bytes = 2 * batch * job.planes * height * width * 4 + int(options.extra_output_bytes)
    host_batch = int(options.tile_batch) if options.tile_batch is not None else DEFAULT_TILE_BATCH
    work = working_bytes(plan, job.in_channels, job.classes, host_batch, strip=True)
    # off the CPU the host holds the outputs, the pinned staging and at most one tile row of raw pixels
    needed = output_bytes + (work if job.device.type == "cpu" else
                             RowWriter.staging_bytes(job.device, job.planes, plan.tile_h, width)
                             + plan.tile_h * width * images.shape[-1] * images.element_size())
    free = available_ram() if options.free_memory is None else int(options.free_memory)
    if needed > HOST_MEMORY_SHARE * free:
        raise InputError(
            f"input '{options.input_name}': segmenting {batch} image(s) of {width} x {height} px needs about "
            f"{needed / 2**30:.2f} GiB of host memory for the outputs ({job.planes} probability + mask plane(s) "
            f"per image, float32) and tile buffers, but only {free / 2**30:.2f} GiB is free; use a smaller "
            "image or fewer images per batch")
    return plan


@dataclass
class _RunState:
    """What the retry loop carries from image to image: the plan, tiles done, the tile batch and its cap."""

    plan: TilePlan
    done: int = 0
    used_batch: int = DEFAULT_TILE_BATCH
    batch_cap: int = 1 << 30  # lowered when an automatic batch runs out of memory


def _shrink_after_oom(state: _RunState, job: SegmentJob, options: SegmentOptions, image: int,
                      error: BaseException, warnings: list[str]) -> None:
    """Halve the automatic tile batch, else the tile size; SegmentationError below the smallest tile."""
    if options.tile_batch is None and job.device.type != "cpu" and state.used_batch > 1:
        # the memory estimate behind the automatic batch was too hopeful: halve it first
        state.batch_cap = state.used_batch // 2
        message = (f"out of memory with {state.used_batch} tiles per call on {job.device}; retrying image "
                   f"{image} with {state.batch_cap}")
    else:
        tile = max(state.plan.tile_h, state.plan.tile_w)
        smaller = tile // 2
        if smaller < max(MIN_TILE, job.divisor):
            raise SegmentationError(f"out of memory even with {tile} px tiles on {job.device}: {error}") from error
        message = f"out of memory with {tile} px tiles on {job.device}; retrying image {image} with {smaller} px tiles"
        state.plan = plan_tiles(state.plan.height, state.plan.width, smaller, options.overlap, job.divisor)
    log.warning("%s", message)
    warnings.append(message)


def run_with_retry(model: nn.Module, job: SegmentJob, images: torch.Tensor, source: torch.Tensor | None,
                   plan_in: InputPlan, state: _RunState, writer: RowWriter, options: SegmentOptions,
                   warnings: list[str]) -> None:
    """Tile every image into ``writer``; an out-of-memory error shrinks the batch or tile and redoes the image.

    ``source`` is the IMAGE batch on the device (None: rows are copied from ``images`` one tile row
    at a time). ``state`` is updated in place (tiles done, the plan and tile batch last used).
    """
    batch = images.shape[0]
    progress = options.progress or no_progress
    mean_d, std_d = job.mean.to(job.device), job.std.to(job.device)
    predict = make_predictor(model, job.device, job.classes, options.tta_flips, speed=job.speed)
    for b in range(batch):
        def read_strip(y0: int, y1: int, b: int = b) -> torch.Tensor:
            rows = source[b, y0:y1] if source is not None else images[b, y0:y1].to(job.device)
            return to_model_input(rows, plan_in, mean_d, std_d)

        def sink(y0: int, probs: torch.Tensor, b: int = b) -> None:
            writer(b, y0, probs)

        while True:
            total = state.done + state.plan.count * (batch - b)
            state.used_batch = int(options.tile_batch) if options.tile_batch is not None else min(
                state.batch_cap, auto_tile_batch(model, state.plan, job.device, job.speed, job.in_channels,
                                                 job.classes))
            try:
                state.done = run_tiled(predict, None, state.plan, job.classes, sink, options.blend,
                                       state.used_batch, progress, state.done, total, read_strip=read_strip)
                break
            except Exception as error:  # noqa: BLE001 - only out-of-memory is retried
                if not is_out_of_memory(error):
                    raise
                writer.discard()
                if options.release_memory is not None:
                    options.release_memory()
                _shrink_after_oom(state, job, options, b, error, warnings)


def segment(model: nn.Module, meta: Any, images: torch.Tensor, options: SegmentOptions | None = None,
            **settings: Any) -> SegmentationResult:
    """Segment an IMAGE batch (see the module docstring); ``settings`` override fields of ``options``.

    Raises InputError for bad options or input (before any work where it can tell), SegmentationError
    for a model or checkpoint that does not fit, or when even the smallest tile runs out of memory.
    The model is put in eval mode for the run and back in its previous mode after it.
    """
    unknown = set(settings) - SEGMENT_OPTION_NAMES
    if unknown:
        raise TypeError(f"segment() got unknown setting(s) {sorted(unknown)}")
    options = replace(options or SegmentOptions(), **settings)
    job = prepare_job(model, meta, images, options)
    plan = plan_job(job, images, options)
    batch, height, width, _ = images.shape

    source = device_copy(images, job.device)  # None: rows are copied from the host one tile row at a time
    plan_in = inspect_images(source if source is not None else images, job.in_channels, options.input_name)
    for message in plan_in.warnings:
        log.warning("%s", message)
    probabilities = torch.empty(batch * job.planes, height, width, dtype=torch.float32)
    masks = torch.empty(batch * job.planes, height, width, dtype=torch.float32)
    warnings = list(plan_in.warnings)
    state = _RunState(plan, used_batch=int(options.tile_batch) if options.tile_batch is not None
                      else DEFAULT_TILE_BATCH)
    was_training = model.training
    model.eval()
    writer = RowWriter(probabilities, masks, job.planes, job.to_planes, job.device, plan.tile_h, width)
    try:
        run_with_retry(model, job, images, source, plan_in, state, writer, options, warnings)
        writer.flush()
    finally:
        writer.discard()
        source = None  # drop the device copy before the caches are released
        model.train(was_training)
        if options.release_memory is not None:
            options.release_memory()
    return SegmentationResult(probabilities, masks, job.plane_names(batch), job.class_names,
                              max(state.plan.tile_h, state.plan.tile_w), state.done, warnings,
                              tile_batch=state.used_batch, speed=job.speed)
