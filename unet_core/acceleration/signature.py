"""The signature of one forward call: what a captured CUDA graph is valid for.

A graph replays fixed kernels on fixed addresses, so a call may replay one only when everything
the kernels were chosen by is the same: the tensors' shapes, strides, dtypes and devices (their
values are copied into the graph's static buffers), and every non-tensor value the forward's
Python reads, such as the cond/uncond composition (``cond_or_uncond``), a patch's settings and the
patch functions themselves. :func:`call_signature` walks the arguments once (dicts, lists and
tuples recursively) and returns

- ``key``: hashable; tensors appear as their layout, plain values (None, bool, int, float, str,
  enums, UUIDs) as themselves, any other object (a patch function, a gate) by identity;
- ``tensors``: the tensor leaves in walk order;
- ``held``: the objects keyed by identity; the cache keeps them alive with the graph, so their
  ids cannot be reused by new objects (a new patch made at a freed address) while it lives;
- ``rebuild(new_tensors)``: the same arguments with the tensor leaves replaced (containers are
  copied, so the capture's forward may write into its option dicts without touching the caller's).

A patch that changes its own Python state between calls without being replaced (a step counter)
is frozen at capture: the key cannot see it. Keys named in ``IGNORED_KEYS`` are left out:
ComfyUI gives each sampling run's conditionings fresh ``uuids``, which no SD UNet reads; keying on
them would re-capture on every queued prompt.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

IGNORED_KEYS = frozenset({"uuids"})
_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, enum.Enum, uuid.UUID)


@dataclass
class CallSignature:
    """What :func:`call_signature` returns (see the module docstring)."""

    key: tuple
    tensors: list[torch.Tensor]
    held: list[Any]
    rebuild: Callable[[list[torch.Tensor]], tuple[tuple, dict]]


def tensor_layout(t: torch.Tensor) -> tuple:
    """What a kernel choice depends on: shape, strides, dtype, device, whether it wants a gradient."""
    return ("T", tuple(t.shape), t.stride(), t.dtype, t.device, t.requires_grad)


def _walk(value: Any, tensors: list[torch.Tensor], held: list[Any]) -> tuple[Any, Callable[[list], Any]]:
    """``(key part, builder)``; ``builder(leaves)`` remakes ``value`` taking its tensors from ``leaves``
    (consumed front to back)."""
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return tensor_layout(value), _take
    if isinstance(value, _PLAIN):
        return value, lambda leaves, v=value: v
    if isinstance(value, dict):
        parts, builders = [], []
        for k, v in value.items():
            if k in IGNORED_KEYS:
                builders.append((k, lambda leaves, v=v: v))
                continue
            part, build = _walk(v, tensors, held)
            parts.append((_plain_key(k, held), part))
            builders.append((k, build))
        return ("dict", type(value), tuple(parts)), lambda leaves: {k: b(leaves) for k, b in builders}
    if isinstance(value, (list, tuple)):
        walked = [_walk(v, tensors, held) for v in value]
        kind = type(value)
        key = ("seq", kind, tuple(part for part, _ in walked))
        if kind in (list, tuple):
            return key, lambda leaves: kind(b(leaves) for _, b in walked)
        return key, lambda leaves: kind(*(b(leaves) for _, b in walked))  # named tuples
    held.append(value)
    return ("id", id(value)), lambda leaves, v=value: v


def _plain_key(k: Any, held: list[Any]) -> Any:
    if isinstance(k, _PLAIN) or (isinstance(k, tuple) and all(isinstance(p, _PLAIN) for p in k)):
        return k
    held.append(k)
    return ("id", id(k))


def _take(leaves: list[torch.Tensor]) -> torch.Tensor:
    return leaves.pop(0)


def call_signature(args: tuple, kwargs: dict[str, Any]) -> CallSignature:
    """The signature of ``forward(*args, **kwargs)`` (see the module docstring)."""
    tensors: list[torch.Tensor] = []
    held: list[Any] = []
    arg_key, build_args = _walk(tuple(args), tensors, held)
    kw_key, build_kwargs = _walk(dict(kwargs), tensors, held)

    def rebuild(new_tensors: list[torch.Tensor]) -> tuple[tuple, dict]:
        if len(new_tensors) != len(tensors):
            raise ValueError(f"rebuild needs {len(tensors)} tensors, got {len(new_tensors)}")
        leaves = list(new_tensors)
        return build_args(leaves), build_kwargs(leaves)

    return CallSignature(key=(arg_key, kw_key), tensors=tensors, held=held, rebuild=rebuild)
