"""Loading a state dict into a segmentation model, with errors that name the file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import SegmentationError
from ..state_dict_fit import fit_problems
from .architectures.base import SegmentationUNet


def load_weights_into(model: SegmentationUNet, state: Mapping[str, torch.Tensor], where: Path | str) -> None:
    """``model.load_state_dict(state, strict=True)`` with a SegmentationError naming the file."""
    problems = fit_problems(model, state)
    if problems:
        raise SegmentationError(f"{where}: weights do not fit the {model.config['architecture']} "
                                f"model: " + "; ".join(problems))
    model.load_state_dict(dict(state), strict=True)
