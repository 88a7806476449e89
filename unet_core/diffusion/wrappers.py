"""Wrappers around the diffusion model's forward, with ComfyUI's calling convention.

ComfyUI lets a MODEL carry wrappers (``ModelPatcher.add_wrapper_with_key(type, key, fn)``); for
the ``"diffusion_model"`` type each is called as ``fn(executor, *args, **kwargs)`` around the
UNet's forward, where ``executor(*args, **kwargs)`` runs the rest of the chain (the next wrapper,
or the forward itself), ``executor.class_obj`` is the UNet module and ``executor.original`` the
unwrapped forward. The standalone patcher keeps wrappers the same way and runs them through
:class:`WrapperChain`, so one wrapper function serves both hosts.

Wrappers are stored as ``{wrapper_type: {key: [fn, ...]}}``; they run outermost first in the
order their keys, then their functions, were added.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DIFFUSION_MODEL = "diffusion_model"  # ComfyUI's WrappersMP.DIFFUSION_MODEL

Wrappers = dict[str, dict[Any, list[Callable[..., Any]]]]


def all_wrappers(wrappers: Wrappers, wrapper_type: str) -> list[Callable[..., Any]]:
    """Every wrapper of ``wrapper_type``, outermost first."""
    return [fn for fns in wrappers.get(wrapper_type, {}).values() for fn in fns]


def copy_wrappers(wrappers: Wrappers) -> Wrappers:
    """A copy whose dicts and lists are new (the functions are shared), as ``clone()`` needs."""
    return {kind: {key: list(fns) for key, fns in table.items()} for kind, table in wrappers.items()}


class WrapperMethods:
    """``ModelPatcher``'s wrapper methods, for a patcher that keeps ``self.wrappers``."""

    wrappers: Wrappers

    def add_wrapper_with_key(self, wrapper_type: str, key: Any, wrapper: Callable[..., Any]) -> None:
        """Add ``wrapper`` under ``key``; for ``"diffusion_model"`` it wraps every UNet forward."""
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def remove_wrappers_with_key(self, wrapper_type: str, key: Any) -> None:
        self.wrappers.get(wrapper_type, {}).pop(key, None)

    def get_wrappers(self, wrapper_type: str, key: Any) -> list[Callable[..., Any]]:
        return list(self.wrappers.get(wrapper_type, {}).get(key, []))

    def get_all_wrappers(self, wrapper_type: str) -> list[Callable[..., Any]]:
        return all_wrappers(self.wrappers, wrapper_type)


class WrapperChain:
    """One step of a wrapper chain: calling it runs wrapper ``index`` (or ``original`` past the end).

    A wrapper receives the chain positioned after itself, so ``executor(*args, **kwargs)``
    continues inward; ``is_last`` is true when that continuation is ``original`` itself.
    """

    def __init__(self, original: Callable[..., Any], class_obj: Any, wrappers: list[Callable[..., Any]],
                 index: int = 0) -> None:
        self.original = original
        self.class_obj = class_obj
        self.wrappers = wrappers
        self.index = index

    @property
    def is_last(self) -> bool:
        return self.index >= len(self.wrappers)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.is_last:
            return self.original(*args, **kwargs)
        inner = WrapperChain(self.original, self.class_obj, self.wrappers, self.index + 1)
        return self.wrappers[self.index](inner, *args, **kwargs)


def run_wrapped(original: Callable[..., Any], class_obj: Any, wrappers: list[Callable[..., Any]],
                *args: Any, **kwargs: Any) -> Any:
    """``original(*args, **kwargs)`` through ``wrappers`` (outermost first); no wrappers: a plain call."""
    if not wrappers:
        return original(*args, **kwargs)
    return WrapperChain(original, class_obj, wrappers)(*args, **kwargs)
