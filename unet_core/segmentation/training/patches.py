"""Random training patches from few large images, with foreground oversampling as nnU-Net does it.

A :class:`PatchSampler` holds the training images [H, W, C], their masks [H, W] and optional
per-pixel weight maps (the border weights, built once per mask), and draws batches of
``patch`` crops. In each batch the last ``round(batch * foreground_fraction)`` samples are
centred on a foreground pixel drawn uniformly from all foreground pixels of a randomly chosen
image (clamped so the patch stays inside; an image without foreground falls back to a uniform
crop), the rest are uniform crops. A uniform crop draws its origin from -(ph - 1) .. H - 1 and
clamps it into 0 .. H - ph (likewise across): every pixel, edge and corner included, is then
covered with the same probability ph / (H + ph - 1) per axis (plain uniform origins would
cover a corner pixel from one origin in (H - ph + 1) * (W - pw + 1) only). The images
are picked uniformly; all randomness comes from the ``torch.Generator`` passed in, so one seed
gives one sequence of batches.

``default_patch_size`` picks the patch side from the image sizes and the device;
``hold_out_tile`` splits one image into a training region and a validation tile when a dataset
has too few images to hold one out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import InputError

CPU_PATCH = 128
GPU_PATCH = 256


def default_patch_size(heights: list[int], widths: list[int], device: torch.device | str) -> tuple[int, int]:
    """(patch height, width): 256 px on a GPU, 128 on the CPU, never larger than the smallest image."""
    side = GPU_PATCH if torch.device(device).type == "cuda" else CPU_PATCH
    return min(side, min(heights)), min(side, min(widths))


@dataclass
class PatchBatch:
    """Images [B, C, ph, pw], masks [B, ph, pw], weights [B, ph, pw] or None, and where each came from."""

    images: torch.Tensor
    masks: torch.Tensor
    weights: torch.Tensor | None
    origins: list[tuple[int, int, int]]  # (image index, y, x)
    centred: list[bool]                  # True where the patch was centred on foreground


class PatchSampler:
    """Draws batches of patches (see the module docstring)."""

    def __init__(self, images: list[torch.Tensor], masks: list[torch.Tensor], patch: tuple[int, int],
                 foreground_fraction: float = 0.33, weights: list[torch.Tensor] | None = None) -> None:
        if not images or len(images) != len(masks):
            raise InputError(f"patches: {len(images)} image(s) and {len(masks)} mask(s); need the same number, "
                             "at least one")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise InputError(f"patches: foreground fraction {foreground_fraction} must lie in 0..1")
        ph, pw = patch
        for index, mask in enumerate(masks):
            if mask.shape[0] < ph or mask.shape[1] < pw:
                raise InputError(f"patches: image {index} is {mask.shape[1]} x {mask.shape[0]} px, smaller than "
                                 f"the {pw} x {ph} patch")
        self.images, self.masks, self.weights = images, masks, weights
        self.patch = (int(ph), int(pw))
        self.foreground_fraction = float(foreground_fraction)
        self._foreground = [torch.nonzero(mask > 0.5).to(torch.int32) for mask in masks]

    def forced_count(self, batch_size: int) -> int:
        """How many samples of a batch are centred on foreground."""
        return int(round(batch_size * self.foreground_fraction))

    def origin(self, index: int, centred: bool, generator: torch.Generator) -> tuple[int, int, bool]:
        """(y, x, centred) of one patch of image ``index``."""
        height, width = self.masks[index].shape
        ph, pw = self.patch
        points = self._foreground[index]
        if centred and len(points):
            pick = int(torch.randint(0, len(points), (), generator=generator))
            cy, cx = (int(v) for v in points[pick])
            y = min(max(cy - ph // 2, 0), height - ph)
            x = min(max(cx - pw // 2, 0), width - pw)
            return y, x, True
        y = int(torch.randint(1 - ph, height, (), generator=generator))
        x = int(torch.randint(1 - pw, width, (), generator=generator))
        return min(max(y, 0), height - ph), min(max(x, 0), width - pw), False

    def crop(self, index: int, y: int, x: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Image [ph, pw, C], mask [ph, pw] and weights [ph, pw] (or None) of the patch at (y, x) of image ``index``."""
        ph, pw = self.patch
        weight = None if self.weights is None else self.weights[index][y:y + ph, x:x + pw]
        return self.images[index][y:y + ph, x:x + pw], self.masks[index][y:y + ph, x:x + pw], weight

    def sample(self, batch_size: int, generator: torch.Generator) -> PatchBatch:
        """One batch of ``batch_size`` patches (images channels-first)."""
        ph, pw = self.patch
        forced_from = batch_size - self.forced_count(batch_size)
        picks = torch.randint(0, len(self.images), (batch_size,), generator=generator).tolist()
        images, masks, weights, origins, centred = [], [], [], [], []
        for slot, index in enumerate(picks):
            y, x, was_centred = self.origin(index, slot >= forced_from, generator)
            image, mask, weight = self.crop(index, y, x)
            images.append(image)
            masks.append(mask)
            if weight is not None:
                weights.append(weight)
            origins.append((index, y, x))
            centred.append(was_centred)
        return PatchBatch(torch.stack(images).permute(0, 3, 1, 2), torch.stack(masks),
                          torch.stack(weights) if self.weights is not None else None, origins, centred)


@dataclass
class TileSplit:
    """A training region and a validation tile cut from one image (both [H', W', C] / [H', W'])."""

    train_image: torch.Tensor
    train_mask: torch.Tensor
    val_image: torch.Tensor
    val_mask: torch.Tensor
    description: str


def hold_out_tile(image: torch.Tensor, mask: torch.Tensor, fraction: float, min_side: int = 16) -> TileSplit:
    """Cut the right-hand ``fraction`` of the columns (the bottom rows when the image is taller) off as validation.

    A strip keeps the training region one rectangle, so patches never overlap the held-out
    tile. Each part keeps at least ``min_side`` px across the cut; InputError when the image is
    too small for that.
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"validation tile: fraction {fraction} must lie strictly between 0 and 1")
    height, width = mask.shape
    along_width = width >= height
    side = width if along_width else height
    held = min(max(int(round(side * fraction)), min_side), side - min_side)
    if side < 2 * min_side or held <= 0:
        raise InputError(f"validation tile: a {width} x {height} px image is too small to hold out a tile "
                         f"(need {2 * min_side} px along its longer side)")
    cut = side - held
    if along_width:
        parts = (image[:, :cut], mask[:, :cut], image[:, cut:], mask[:, cut:])
        where = f"the right {held} of {width} px columns"
    else:
        parts = (image[:cut], mask[:cut], image[cut:], mask[cut:])
        where = f"the bottom {held} of {height} px rows"
    return TileSplit(*(p.contiguous() for p in parts), description=where)
