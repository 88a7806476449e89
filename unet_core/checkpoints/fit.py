"""``fit_problems`` under the checkpoints room's name.

The check lives in the leaf module ``unet_core.state_dict_fit`` so that every room (diffusion,
checkpoints, segmentation) can use it without importing another room; this module re-exports it.
"""

from __future__ import annotations

from ..state_dict_fit import fit_problems

__all__ = ["fit_problems"]
