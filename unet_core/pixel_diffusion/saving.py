"""Save a pixel diffusion U-Net as safetensors in our canonical layout, config in the metadata.

The file rebuilds the model alone: ``unet_lab.pixel_diffusion.config`` holds the
:class:`PixelUNetConfig` as JSON (read back by the sniffer before shape inference). Writes
are atomic and never replace an existing file (``checkpoints.writer``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..checkpoints.writer import _atomic_write, write_safetensors
from ..pixel_unet_config import METADATA_KEY, PixelUNetConfig


def save_pixel_unet(path: str | Path, unet: torch.nn.Module, config: PixelUNetConfig,
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``unet``'s weights (fp32 on CPU) to ``path``; CheckpointError if the file exists."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in unet.state_dict().items()}
    md = {METADATA_KEY: config.to_json(), "modelspec.architecture": "pixel-diffusion-unet",
          "modelspec.implementation": "unet_lab", **(metadata or {})}
    _atomic_write(path, lambda p: write_safetensors(p, tensors, md), overwrite=False)
    return path
