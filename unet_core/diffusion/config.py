"""The SD-family configs under the diffusion room's name.

``UNetConfig`` and the real configs live in the leaf module ``unet_core.unet_config`` so that
``checkpoints`` and ``diffusion`` can both use them without importing each other; this module
re-exports them for code that reads ``unet_core.diffusion.config``.
"""

from __future__ import annotations

from ..unet_config import SD1_CONFIG, SD2_CONFIG, SDXL_CONFIG, UNetConfig

__all__ = ["SD1_CONFIG", "SD2_CONFIG", "SDXL_CONFIG", "UNetConfig"]
