"""The optional compiled path of the diffusion UNet: ``torch.compile`` with a clean eager fallback.

Two scopes:

- ``"blocks"`` (regional compilation): every residual block and every transformer block (its
  patch-free ``plain`` path; a block with attention patches runs them eagerly) is compiled on
  its own. Blocks of one class and one shape share their compiled code, so an SD1
  UNet compiles in a fraction of the time of the whole graph, and the UNet's own Python (skip
  connections, patches such as the skip gate or FreeU) stays eager and patchable.
- ``"full"``: the whole forward as one graph (longer to compile; fewer launches).

Either way each compiled region is a :class:`~unet_core.compiling.CompiledCall`: if compiling
fails (no Triton or C++ compiler, an unsupported graph), that region logs one warning and runs
eagerly; the outputs are the eager ones then. Compiled and eager outputs agree to the rounding
of the dtype (``benchmarks/bench_unet.py --compile`` records the max difference on the GPU).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..compiling import CompiledCall

SCOPES = ("blocks", "full")
# our repeated blocks and the method that holds their tensor-only work (resblock.py, attention.py)
REPEATED_BLOCKS = {"ResBlock": "forward", "BasicTransformerBlock": "plain"}


def compile_blocks(model: nn.Module, methods: Mapping[str, str], what: str = "block", **options: Any) -> int:
    """Route the method ``methods[class name]`` of each matching submodule through a compiled
    call (in place; the weights are untouched). Returns how many modules were wrapped. The
    methods should take tensors only: values read from a dict argument become guards, and a
    block that passes its own position would compile once per position."""
    count = 0
    for module in model.modules():
        method = methods.get(type(module).__name__)
        if method and not isinstance(getattr(module, method), CompiledCall):
            setattr(module, method, CompiledCall(getattr(module, method), f"{what} {type(module).__name__}", **options))
            count += 1
    return count


def compile_unet(model: nn.Module, scope: str = "blocks", **options: Any) -> Callable[..., Any]:
    """A callable running ``model`` compiled at ``scope`` (see the module docstring).

    ``options`` go to ``torch.compile`` (``mode``, ``dynamic``, ``backend``). For ``"blocks"`` the
    model itself is returned, its blocks now compiled; for ``"full"``, a wrapper around it.
    """
    if scope not in SCOPES:
        raise ValueError(f"compile scope {scope!r}: expected one of {SCOPES}")
    if scope == "full":
        return CompiledCall(model, "the diffusion UNet", **options)
    if not compile_blocks(model, REPEATED_BLOCKS, "UNet", **options):
        raise ValueError(f"{type(model).__name__} has no {' or '.join(REPEATED_BLOCKS)} to compile")
    return model
