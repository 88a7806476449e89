"""The decoder's ``cat([h, hsp], 1)``, which an ``output_block_patch`` may hand over already made.

A patch that writes its output anyway can write it straight into the concatenation and spare
the UNet the copy (the fused skip gate does: ``gates/fused_gate.py``). The protocol, offered by
our UNet only (ComfyUI's UNet does not set the key, so patches there return plain tensors):

- before an output block's patches run, the UNet sets ``transformer_options[SKIP_CONCATENATION]``
  to None: a patch may then set it to ``(h, hsp, joined)``, where ``h`` and ``hsp`` are the two
  channel slices of ``joined`` (views of it), and return ``(h, hsp)``;
- after the patches, :func:`concatenate_skip` uses ``joined`` only if the pair the last patch
  returned is that very pair (a later patch that returned other tensors gets ``torch.cat``).
  Writes into ``h`` or ``hsp`` in place land in ``joined``, since they are its views.
"""

from __future__ import annotations

from typing import Any

import torch

SKIP_CONCATENATION = "skip_concatenation"


def concatenate_skip(h: torch.Tensor, hsp: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
    """``torch.cat([h, hsp], 1)``, or the tensor a patch joined them in (module docstring); the
    offer in ``options`` is reset to None either way."""
    offered = options.get(SKIP_CONCATENATION)
    options[SKIP_CONCATENATION] = None
    if offered is not None and offered[0] is h and offered[1] is hsp:
        return offered[2]
    return torch.cat([h, hsp], dim=1)
