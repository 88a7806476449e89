"""What the pixel diffusion nodes run: sampling to an IMAGE batch, training from IMAGE batches or folders.

ComfyUI IMAGE is ``[B, H, W, C]`` float 0..1; the models work on ``[B, C, H, W]`` in [-1, 1].
These functions convert at the edges, check inputs before heavy work (size against the
model's levels, class labels against its classes) and report progress with a preview image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..pixel_unet_config import PixelUNetConfig
from .loading import PixelModel
from .sampling import SampleSettings, sample
from .schedule import NoiseSchedule
from .training import TrainResult, TrainSettings, train_pixel_unet

PreviewHook = Callable[[int, int, "Image.Image | None"], None]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
PRESETS: dict[str, PixelUNetConfig] = {
    "tiny (32-64-64, 1.1 M)": PixelUNetConfig(
        block_channels=(32, 64, 64), num_res_blocks=1, attention_levels=(2,), norm_groups=8, time_channels=32,
        time_embed_dim=128, beta_schedule="cosine"),
    "small (64-128-128-256, 6 M)": PixelUNetConfig(
        block_channels=(64, 128, 128, 256), num_res_blocks=2, attention_levels=(2,), norm_groups=16,
        time_channels=64, time_embed_dim=256, beta_schedule="cosine"),
}


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, C] 0..1 -> [B, C, H, W] in [-1, 1]."""
    return images.float().permute(0, 3, 1, 2) * 2 - 1


def to_image(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] in [-1, 1] -> IMAGE [B, H, W, 3] 0..1 on the CPU (1-channel models shown grey)."""
    img = (x.float().cpu() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    return img.expand(-1, -1, -1, 3).contiguous() if img.shape[-1] == 1 else img[..., :3].contiguous()


def preview_grid(x: torch.Tensor, max_images: int = 16) -> Image.Image:
    """A square-ish grid of the first images of ``x`` ([-1, 1]) as a PIL image."""
    img = (to_image(x[:max_images]).numpy() * 255).astype(np.uint8)
    n, h, w, c = img.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i in range(n):
        grid[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = img[i]
    return Image.fromarray(grid)


def sample_images(pm: PixelModel, settings: SampleSettings, seed: int, batch_size: int, size: int = 0,
                  class_label: int = -1, schedule: str = "auto", device: torch.device | str = "cpu",
                  preview_every: int = 0, on_progress: PreviewHook | None = None) -> torch.Tensor:
    """IMAGE [batch, size, size, 3] sampled from ``pm`` with ``seed`` (size 0: the model's own resolution)."""
    c = pm.config
    size = size or c.image_size or 0
    if size <= 0 or size % c.downsample_factor:
        raise InputError(f"size {size} must be a positive multiple of {c.downsample_factor} for this model "
                         f"({c.num_levels} levels)" + ("" if c.image_size else "; its resolution is not known, "
                                                        "set size"))
    null = c.num_classes - 1 if c.num_classes and c.null_class else None
    labels = None
    if c.num_classes:
        real = c.num_classes - (1 if c.null_class else 0)
        if class_label >= real:
            raise InputError(f"class_label {class_label} is out of range: the model has classes 0..{real - 1}")
        g = torch.Generator().manual_seed(seed + 1)
        labels = (torch.randint(0, real, (batch_size,), generator=g) if class_label < 0
                  else torch.full((batch_size,), class_label, dtype=torch.long))
    elif settings.guidance != 1.0:
        raise InputError("classifier-free guidance needs a class-conditional model with a null class; set guidance 1")
    if settings.guidance != 1.0 and null is None:
        raise InputError("this model has no null class, so classifier-free guidance is not possible; set guidance 1")
    sched = NoiseSchedule.for_config(c, None if schedule == "auto" else schedule)
    unet = pm.unet.to(device)

    def hook(done: int, total: int, x0: torch.Tensor) -> None:
        if on_progress is not None:
            show = preview_every > 0 and (done % preview_every == 0 or done == total)
            on_progress(done, total, preview_grid(x0) if show else None)

    x = sample(lambda xx, t, y: unet(xx, t, y), sched, (batch_size, c.in_channels, size, size),
               torch.Generator().manual_seed(seed), settings, c.prediction, labels, null, device, hook)
    return to_image(x)


def folder_images(folder: Path, size: int) -> torch.Tensor:
    """Every image in ``folder`` (not recursive), centre-cropped square and resized to ``size``: IMAGE batch."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    out = []
    for p in files:
        try:
            with Image.open(p) as img:
                img = img.convert("RGB")
                side = min(img.size)
                left, top = (img.width - side) // 2, (img.height - side) // 2
                img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
                out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0))
        except OSError as exc:
            raise InputError(f"{p}: cannot read the image ({exc})") from None
    return torch.stack(out)


def train_from_images(images: torch.Tensor, preset: str, settings: TrainSettings, device: torch.device | str,
                      progress: Callable[[int, int, str], None]) -> tuple[PixelModel, TrainResult]:
    """Train a fresh ``preset`` model on IMAGE ``images``; returns the EMA model (on the CPU) and the result."""
    if preset not in PRESETS:
        raise InputError(f"unknown model size {preset!r} (one of {list(PRESETS)})")
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[1] != images.shape[2]:
        raise InputError(f"training images must be a square IMAGE batch [B, S, S, 3], got {tuple(images.shape)}")
    config = replace(PRESETS[preset], image_size=int(images.shape[1]), in_channels=int(images.shape[-1]),
                     out_channels=int(images.shape[-1]))
    if images.shape[1] % config.downsample_factor:
        raise InputError(f"image size {images.shape[1]} must be a multiple of {config.downsample_factor}")
    result = train_pixel_unet(config, to_model_space(images), None, settings, device, progress)
    ema = result.ema.to("cpu").eval().requires_grad_(False)
    return PixelModel(ema, config, "trained", f"trained {preset} on {images.shape[0]} images"), result
