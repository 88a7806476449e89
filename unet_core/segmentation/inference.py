"""Segment IMAGE batches with a segmentation U-Net: input checks, tiling, activation, class choice.

``segment`` takes ComfyUI's IMAGE ([B, H, W, C] float 0..1) and returns probabilities and
binary masks as [N, H, W] float32 at the input size (N = B, or B x classes for ``"all"``).

What it does with unusual input (each case is logged as a warning and listed in the result):

- RGBA (C = 4): the alpha channel is dropped; C = 2 (gray + alpha) keeps the gray channel.
- Grayscale (C = 1) for a 3-channel model: replicated; RGB for a 1-channel model: luminance
  (ITU-R BT.601 weights). Any other mismatch is an ``InputError``.
- Values outside 0..1: integer tensors are scaled by their type (uint8 / 255, wider / 65535);
  float values whose maximum exceeds 1.5 are taken for 8-bit (max <= 255, / 255) or 16-bit
  (max <= 65535, / 65535) pixel values that an upstream node forgot to scale, since clamping
  them would turn the image white; small excursions (a colour-correction overshoot) are
  clamped to 0..1. Anything larger than 65535 is refused.
- NaN or infinite pixels are refused with an ``InputError`` naming the input: replacing them
  silently would segment something the user did not see.
- An empty batch or a zero-sized image is refused; tiny images (even 1 x 1) are padded by the
  model to its size divisor and cropped back.

Normalisation is the checkpoint's: ``(x - mean) / std`` per channel from ``meta.normalization``.
One output channel means a sigmoid (binary), several a softmax over classes.

Class modes: ``"foreground"`` (binary: the sigmoid; multi-class: 1 - P(class 0), mask where
that reaches the threshold), ``"class:<name or index>"`` (that class's probability; mask by
argmax, or by the threshold when one is given), ``"all"`` (every class as its own plane,
masks by argmax; B x K planes ordered image-major).

Large images run tiled (see :mod:`.tiling`); memory is bounded by the tile and the output. The
outputs themselves must fit: the request is refused up front, with the sizes, when outputs and
working buffers exceed the free host memory. On a CUDA out-of-memory error the tile size is
halved and the image redone, down to ``min_tile`` (an automatically chosen tile batch is halved
first).

On a GPU the work stays there: the IMAGE batch is copied to the device once when it fits
(``UPLOAD_LIMIT``; else one tile row at a time), its values are checked there, each tile row is
normalised once and its tiles are sliced, batched (``auto_tile_batch``) and blended on the
device, and finished rows come back through a pinned buffer while the next row computes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..compiling import is_out_of_memory
from ..errors import InputError, SegmentationError
from ..memory import available_ram
from ..progress import ProgressCallback, no_progress
from .device_io import DEFAULT_TILE_BATCH, RowWriter, auto_tile_batch, device_copy, resolve_speed
from .tiling import BLENDS, plan_tiles, run_tiled, working_bytes

log = logging.getLogger(__name__)

LUMA = (0.299, 0.587, 0.114)
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
MIN_TILE = 32


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


def _meta(meta: Any, name: str, default: Any) -> Any:
    if meta is None:
        return default
    if isinstance(meta, dict):
        return meta.get(name, default)
    return getattr(meta, name, default)


def model_channels(model: nn.Module) -> tuple[int, int]:
    """(in_channels, out_channels) of a segmentation model, from its config or first/last conv."""
    config = getattr(model, "config", None) or {}
    cin, cout = config.get("in_channels"), config.get("out_channels")
    if cin is None or cout is None:
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise SegmentationError("cannot tell the model's channels: no config and no Conv2d")
        cin = cin if cin is not None else convs[0].in_channels
        cout = cout if cout is not None else convs[-1].out_channels
    return int(cin), int(cout)


# -- input checks ----------------------------------------------------------------------------
@dataclass(frozen=True)
class InputPlan:
    """How raw IMAGE values become model input: scale, clamp, channel mapping."""

    scale: float
    clamp: bool
    channel_map: str  # "direct", "drop_alpha", "gray_alpha", "replicate", "luma"
    warnings: tuple[str, ...]


def inspect_images(images: torch.Tensor, in_channels: int, input_name: str = "image",
                   rows_per_chunk: int = 256, values: bool = True) -> InputPlan:
    """Check an IMAGE batch and decide how to map it to the model's input; raises InputError.

    ``values=False`` checks shape and channels only (cheap: nothing is read).
    """
    if not isinstance(images, torch.Tensor):
        raise InputError(f"input '{input_name}': expected an IMAGE tensor [B, H, W, C], got {type(images).__name__}")
    if images.ndim == 3:
        raise InputError(f"input '{input_name}': got a 3-D tensor {tuple(images.shape)}; an IMAGE is [B, H, W, C] "
                         "(a MASK [B, H, W] needs MaskToImage first)")
    if images.ndim != 4:
        raise InputError(f"input '{input_name}': expected an IMAGE [B, H, W, C], got shape {tuple(images.shape)}")
    batch, height, width, channels = images.shape
    if batch == 0:
        raise InputError(f"input '{input_name}': the image batch is empty (0 images)")
    if height == 0 or width == 0:
        raise InputError(f"input '{input_name}': the image has zero size ({height} x {width})")
    warnings: list[str] = []
    mapping = {4: "drop_alpha", 2: "gray_alpha"}.get(channels, "direct")
    if channels not in (1, 2, 3, 4):
        raise InputError(f"input '{input_name}': {channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    if mapping == "drop_alpha":
        warnings.append(f"input '{input_name}': RGBA image, alpha channel dropped")
    if mapping == "gray_alpha":
        warnings.append(f"input '{input_name}': gray + alpha image, alpha channel dropped")
    colour = 3 if channels in (3, 4) else 1
    if colour != in_channels:
        if colour == 1 and in_channels == 3:
            mapping = "replicate" if mapping == "direct" else "gray_alpha_replicate"
            warnings.append(f"input '{input_name}': grayscale image replicated to the model's 3 channels")
        elif colour == 3 and in_channels == 1:
            mapping = "luma" if mapping == "direct" else "drop_alpha_luma"
            warnings.append(f"input '{input_name}': RGB image converted to luminance for a 1-channel model")
        else:
            raise InputError(f"input '{input_name}': a {colour}-channel image cannot feed a model "
                             f"with {in_channels} input channels")
    if not values:
        return InputPlan(1.0, False, mapping, tuple(warnings))
    return _inspect_values(images, mapping, warnings, input_name, rows_per_chunk)


def _value_stats(images: torch.Tensor, rows_per_chunk: int) -> tuple[float, float, int]:
    """(min, max, count of non-finite values) of a float IMAGE, in row chunks (bounded temporaries).

    The running figures stay tensors on the images' device, so a GPU copy is checked with one
    wait at the end instead of one per chunk. Min and max are meaningless when the count is not 0.
    """
    batch, height = images.shape[:2]
    device = images.device
    low = torch.full((), float("inf"), device=device)
    high = torch.full((), float("-inf"), device=device)
    bad = torch.zeros((), dtype=torch.int64, device=device)
    for b in range(batch):
        for y0 in range(0, height, rows_per_chunk):
            chunk = images[b, y0:y0 + rows_per_chunk]
            finite = torch.isfinite(chunk)
            bad = bad + (finite.numel() - finite.sum())
            low = torch.minimum(low, chunk.amin().float())
            high = torch.maximum(high, chunk.amax().float())
    return float(low), float(high), int(bad)


def _inspect_values(images: torch.Tensor, mapping: str, warnings: list[str], input_name: str,
                    rows_per_chunk: int) -> InputPlan:
    if not images.is_floating_point():
        if images.dtype == torch.bool:
            return InputPlan(1.0, False, mapping, tuple(warnings))
        scale = 255.0 if images.dtype == torch.uint8 else 65535.0
        warnings.append(f"input '{input_name}': integer pixels ({images.dtype}) scaled by 1/{scale:.0f}")
        return InputPlan(scale, True, mapping, tuple(warnings))
    low, high, bad = _value_stats(images, rows_per_chunk)
    if bad:
        raise InputError(f"input '{input_name}': {bad} NaN or infinite pixel value(s); fix the upstream node "
                         "(the image cannot be segmented with undefined pixels)")
    scale = 1.0
    if high > 1.5:
        if high <= 255.0:
            scale = 255.0
            warnings.append(f"input '{input_name}': values up to {high:g} look like 8-bit pixels; scaled by 1/255")
        elif high <= 65535.0:
            scale = 65535.0
            warnings.append(f"input '{input_name}': values up to {high:g} look like 16-bit pixels; scaled by 1/65535")
        else:
            raise InputError(f"input '{input_name}': pixel values up to {high:g}; an IMAGE holds 0..1")
    clamp = low < 0.0 or high / scale > 1.0
    if clamp:
        warnings.append(f"input '{input_name}': values in [{low:g}, {high:g}] outside 0..1 after scaling; clamped")
    return InputPlan(scale, clamp, mapping, tuple(warnings))


def to_model_input(pixels: torch.Tensor, plan: InputPlan, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """IMAGE pixels [h, w, C] -> normalised model input [C', h, w] float32."""
    x = pixels.float()
    if plan.scale != 1.0:
        x = x / plan.scale
    if plan.clamp:
        x = x.clamp(0.0, 1.0)
    mapping = plan.channel_map
    if mapping.startswith("drop_alpha"):
        x = x[..., :3]
    elif mapping.startswith("gray_alpha"):
        x = x[..., :1]
    if mapping.endswith("replicate"):
        x = x.expand(*x.shape[:-1], 3)
    elif mapping.endswith("luma"):
        x = (x * torch.tensor(LUMA, dtype=x.dtype, device=x.device)).sum(-1, keepdim=True)
    x = x.permute(2, 0, 1)
    mean, std = mean.to(x.device), std.to(x.device)
    return ((x - mean[:, None, None]) / std[:, None, None]).contiguous()


# -- class selection ---------------------------------------------------------------------------
def resolve_class_mode(class_mode: str, classes: int, class_names: list[str]) -> tuple[str, int | None]:
    """("foreground" | "class" | "all", class index or None)."""
    mode = (class_mode or "foreground").strip()
    if mode in ("foreground", "all"):
        return mode, None
    if mode.startswith("class:"):
        key = mode[len("class:"):].strip()
        if key.lstrip("-").isdigit():
            index = int(key)
        elif key in class_names:
            index = class_names.index(key)
        elif classes == 1 and key in ("foreground", "fg"):
            index = 0
        else:
            raise InputError(f"class_mode {class_mode!r}: no class named {key!r}; classes: {class_names}")
        if not 0 <= index < classes:
            raise InputError(f"class_mode {class_mode!r}: index {index} out of range; the model has "
                             f"{classes} output class(es): {class_names}")
        return "class", index
    raise InputError(f"class_mode {class_mode!r}: expected 'foreground', 'all' or 'class:<name or index>'")


def _planes(probs: torch.Tensor, mode: str, index: int | None, threshold: float,
            explicit_threshold: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities [K, h, w] -> (probability planes, mask planes) [P, h, w]."""
    classes = probs.shape[0]
    if classes == 1:
        p = probs[:1]
        return p, (p >= threshold).float()
    if mode == "foreground":
        p = (1.0 - probs[0]).clamp(0.0, 1.0)[None]
        return p, (p >= threshold).float()
    labels = probs.argmax(0)
    if mode == "class":
        p = probs[index:index + 1]
        mask = (p >= threshold).float() if explicit_threshold else (labels == index).float()[None]
        return p, mask
    masks = (labels[None] == torch.arange(classes, device=probs.device)[:, None, None]).float()
    return probs, masks


# -- the model pass ----------------------------------------------------------------------------
def make_predictor(model: nn.Module, device: torch.device, classes: int, tta_flips: bool,
                   speed: str = "exact") -> Callable[[torch.Tensor], torch.Tensor]:
    """[N, C, h, w] -> class probabilities [N, K, h, w]; mean over the 4 flips when ``tta_flips``.

    ``speed``: ``"exact"`` runs the model as it is (its own dtype); ``"fast"`` a cached copy with
    BatchNorm folded (bf16 + channels_last on CUDA); ``"compiled"`` that copy under
    ``torch.compile``, falling back to ``"fast"`` when compiling fails (see :mod:`.fast`).
    """
    from .fast import SPEEDS, prepare_inference

    if speed not in SPEEDS:
        raise InputError(f"speed {speed!r}: expected one of {list(SPEEDS)}")
    if speed == "exact":
        dtype = next((p.dtype for p in model.parameters()), torch.float32)

        def forward(x: torch.Tensor) -> torch.Tensor:
            return model(x.to(device=device, dtype=dtype))
    else:
        forward = prepare_inference(model, device, speed)

    def activate(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return torch.sigmoid(logits) if classes == 1 else torch.softmax(logits, dim=1)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = batch.to(device=device)
            if not tta_flips:
                return activate(forward(x))
            total = None
            for dims in FLIPS:
                xi = x.flip(dims) if dims else x
                p = activate(forward(xi))
                p = p.flip(dims) if dims else p
                total = p if total is None else total + p
            return total / len(FLIPS)

    return predict


def segment(model: nn.Module, meta: Any, images: torch.Tensor, tile_size: int = 512, overlap: float = 0.25,
            blend: str = "gaussian", tta_flips: bool = False, threshold: float | None = None,
            class_mode: str = "foreground", device: torch.device | str | None = None,
            progress: ProgressCallback | None = None, input_name: str = "image", tile_batch: int | None = None,
            free_memory: int | None = None, extra_output_bytes: int = 0,
            release_memory: Callable[[], None] | None = None, speed: str = "exact") -> SegmentationResult:
    """Segment an IMAGE batch; see the module docstring for the handling of every input case.

    ``free_memory``: free host bytes (default: the OS's available memory); the request is
    refused before any work if outputs (+ ``extra_output_bytes``, e.g. an overlay image) and the
    working buffers do not fit. ``release_memory`` is called after the run (accelerator caches).
    ``tile_batch``: tiles per model call (None: 4 on the CPU, from a memory estimate on CUDA).
    ``speed``: how the model runs (see ``make_predictor``): "exact" (as stored, float32),
    "fast" (folded norms, channels_last, bf16 autocast on CUDA), "compiled" (fast + torch.compile),
    or "auto" ("fast" on CUDA, "exact" elsewhere).

    On a GPU the image is copied to the device once when it fits (else one tile row at a time),
    tiles are cut, stacked and blended there, and finished rows come back to the host outputs.
    """
    if blend not in BLENDS:
        raise InputError(f"blend {blend!r}: expected one of {list(BLENDS)}")
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap {overlap}: expected 0 <= overlap < 1")
    if tile_size < 1:
        raise InputError(f"tile_size {tile_size}: expected a positive number of pixels")
    if tile_batch is not None and int(tile_batch) < 1:
        raise InputError(f"tile_batch {tile_batch}: expected at least 1 tile per model call")
    in_channels, classes = model_channels(model)
    inspect_images(images, in_channels, input_name, values=False)  # shape first: cheap, before planning
    batch, height, width, _ = images.shape
    names = list(_meta(meta, "class_names", None) or [])
    if len(names) != max(classes, 1) or not names:
        names = ["foreground"] if classes == 1 else [f"class_{k}" for k in range(classes)]
    mode, index = resolve_class_mode(class_mode, classes, names)
    explicit = threshold is not None
    thr = float(threshold if explicit else _meta(meta, "threshold", 0.5) or 0.5)
    if not 0.0 <= thr <= 1.0:
        raise InputError(f"threshold {thr}: expected a value in 0..1")
    norm = _meta(meta, "normalization", None) or {}
    mean = torch.tensor(norm.get("mean", [0.0] * in_channels), dtype=torch.float32).reshape(-1)
    std = torch.tensor(norm.get("std", [1.0] * in_channels), dtype=torch.float32).reshape(-1)
    if mean.numel() == 1:
        mean = mean.expand(in_channels)
    if std.numel() == 1:
        std = std.expand(in_channels)
    if mean.numel() != in_channels or std.numel() != in_channels or bool((std <= 0).any()):
        raise SegmentationError(f"checkpoint normalisation mean={mean.tolist()} std={std.tolist()} does not fit "
                                f"a {in_channels}-channel model")
    divisor = int(getattr(model, "size_divisor", 1) or 1)
    planes = classes if (mode == "all" and classes > 1) else 1
    device = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    speed = resolve_speed(speed, device)

    tile = max(int(tile_size), divisor)
    plan = plan_tiles(height, width, tile, overlap, divisor)
    output_bytes = 2 * batch * planes * height * width * 4 + int(extra_output_bytes)
    host_batch = int(tile_batch) if tile_batch is not None else DEFAULT_TILE_BATCH
    work = working_bytes(plan, in_channels, classes, host_batch, strip=True)
    # off the CPU the host holds the outputs, the pinned staging and at most one tile row of raw pixels
    needed = output_bytes + (work if device.type == "cpu" else
                             RowWriter.staging_bytes(device, planes, plan.tile_h, width)
                             + plan.tile_h * width * images.shape[-1] * images.element_size())
    free = available_ram() if free_memory is None else int(free_memory)
    if needed > 0.9 * free:
        raise InputError(
            f"input '{input_name}': segmenting {batch} image(s) of {width} x {height} px needs about "
            f"{needed / 2**30:.2f} GiB of host memory for the outputs ({planes} probability + mask plane(s) "
            f"per image, float32) and tile buffers, but only {free / 2**30:.2f} GiB is free; use a smaller "
            "image or fewer images per batch")

    source = device_copy(images, device)  # None: rows are copied from the host one tile row at a time
    plan_in = inspect_images(source if source is not None else images, in_channels, input_name)  # NaN, range
    for message in plan_in.warnings:
        log.warning("%s", message)
    mean_d, std_d = mean.to(device), std.to(device)
    probabilities = torch.empty(batch * planes, height, width, dtype=torch.float32)
    masks = torch.empty(batch * planes, height, width, dtype=torch.float32)
    warnings = list(plan_in.warnings)
    progress = progress or no_progress
    was_training = model.training
    model.eval()
    done = 0
    used_batch = host_batch
    batch_cap = 1 << 30  # lowered when an automatic batch runs out of memory
    writer = RowWriter(probabilities, masks, planes, lambda probs: _planes(probs, mode, index, thr, explicit),
                        device, plan.tile_h, width)
    try:
        predict = make_predictor(model, device, classes, tta_flips, speed=speed)
        for b in range(batch):
            def read_strip(y0: int, y1: int, b: int = b) -> torch.Tensor:
                rows = source[b, y0:y1] if source is not None else images[b, y0:y1].to(device)
                return to_model_input(rows, plan_in, mean_d, std_d)

            def sink(y0: int, probs: torch.Tensor, b: int = b) -> None:
                writer(b, y0, probs)

            while True:
                total = done + plan.count * (batch - b)
                used_batch = int(tile_batch) if tile_batch is not None else min(batch_cap, auto_tile_batch(
                    model, plan, device, speed, in_channels, classes))
                try:
                    done = run_tiled(predict, None, plan, classes, sink, blend, used_batch, progress, done, total,
                                     read_strip=read_strip)
                    break
                except Exception as error:  # noqa: BLE001 - only out-of-memory is retried
                    if not is_out_of_memory(error):
                        raise
                    writer.discard()
                    if release_memory is not None:
                        release_memory()
                    if tile_batch is None and device.type != "cpu" and used_batch > 1:
                        # the memory estimate behind the automatic batch was too hopeful: halve it first
                        batch_cap = used_batch // 2
                        message = (f"out of memory with {used_batch} tiles per call on {device}; retrying image "
                                   f"{b} with {batch_cap}")
                        log.warning("%s", message)
                        warnings.append(message)
                        continue
                    smaller = max(plan.tile_h, plan.tile_w) // 2
                    if smaller < max(MIN_TILE, divisor):
                        raise SegmentationError(f"out of memory even with {max(plan.tile_h, plan.tile_w)} px tiles on "
                                                f"{device}: {error}") from error
                    message = (f"out of memory with {max(plan.tile_h, plan.tile_w)} px tiles on {device}; "
                               f"retrying image {b} with {smaller} px tiles")
                    log.warning("%s", message)
                    warnings.append(message)
                    plan = plan_tiles(height, width, smaller, overlap, divisor)
        writer.flush()
    finally:
        writer.discard()
        source = None  # drop the device copy before the caches are released
        model.train(was_training)
        if release_memory is not None:
            release_memory()
    plane_names = [names[k] for _ in range(batch) for k in range(planes)] if planes > 1 else \
        [("foreground" if mode == "foreground" else names[index or 0])] * batch
    return SegmentationResult(probabilities, masks, plane_names, names, max(plan.tile_h, plan.tile_w),
                              done, warnings, tile_batch=used_batch, speed=speed)


# -- what travels between nodes --------------------------------------------------------------
@dataclass
class SegUNet:
    """The SEG_UNET value: a segmentation model with its checkpoint meta and where it came from."""

    model: nn.Module
    meta: Any
    name: str = ""

    def describe(self) -> str:
        config = getattr(self.model, "config", {}) or {}
        params = sum(p.numel() for p in self.model.parameters())
        classes = list(_meta(self.meta, "class_names", []) or [])
        return (f"{self.name or 'segmentation model'}: {config.get('architecture', type(self.model).__name__)}, "
                f"depth {config.get('depth', '?')}, base {config.get('base_channels', '?')}, "
                f"{params / 1e6:.2f} M parameters, classes {classes}")


PALETTE = ((1.0, 0.2, 0.2), (0.2, 0.9, 0.2), (0.2, 0.4, 1.0), (1.0, 0.9, 0.1), (0.9, 0.2, 0.9), (0.1, 0.9, 0.9))


def overlay(images: torch.Tensor, masks: torch.Tensor, plane_names: list[str], alpha: float = 0.45) -> torch.Tensor:
    """IMAGE [B, H, W, 3]: the input with each mask plane tinted in its own colour (background planes skipped)."""
    batch = images.shape[0]
    planes = masks.shape[0] // batch
    plan = inspect_images(images, 3)
    out = torch.empty(batch, images.shape[1], images.shape[2], 3, dtype=torch.float32)
    for b in range(batch):
        base = to_model_input(images[b], plan, torch.zeros(3), torch.ones(3)).permute(1, 2, 0)
        for k in range(planes):
            if planes > 1 and plane_names[b * planes + k] == "background":
                continue
            colour = torch.tensor(PALETTE[k % len(PALETTE)])
            weight = masks[b * planes + k][..., None] * alpha
            base = base * (1 - weight) + colour * weight
        out[b] = base
    return out


def compare_masks(masks: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """(Dice, IoU) of predicted masks against ground truth, all pixels pooled (truth > 0.5 is foreground)."""
    from .metrics import dice_score, iou_score

    if truth.ndim == 4 and truth.shape[1] == 1:
        truth = truth[:, 0]
    if masks.shape != truth.shape:
        raise InputError(f"input 'ground_truth': shape {tuple(truth.shape)} does not match the masks "
                         f"{tuple(masks.shape)}")
    target = (truth > 0.5).float()
    return float(dice_score(masks, target)), float(iou_score(masks, target))
