"""The model pass of a segmentation run: device input -> class probabilities, with optional flip TTA."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ...errors import InputError
from ..speed.fast import SPEEDS, prepare_inference

FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def make_predictor(model: nn.Module, device: torch.device, classes: int, tta_flips: bool,
                   speed: str = "exact") -> Callable[[torch.Tensor], torch.Tensor]:
    """[N, C, h, w] -> class probabilities [N, K, h, w]; mean over the 4 flips when ``tta_flips``.

    ``speed``: ``"exact"`` runs the model as it is (its own dtype); ``"fast"`` a cached copy with
    BatchNorm folded (bf16 + channels_last on CUDA); ``"compiled"`` that copy under
    ``torch.compile``, falling back to ``"fast"`` when compiling fails (see :mod:`.fast`).
    """
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
