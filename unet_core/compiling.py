"""``torch.compile`` as an optional speed-up: any failure falls back to the eager function, once.

Compilation can fail for reasons outside the pack (no Triton, no C++ compiler, an unsupported
Python, a graph the compiler cannot handle), at ``torch.compile`` time or at the first call,
when tracing happens. :class:`CompiledCall` catches either, logs one warning naming what was
being compiled and why, and runs the eager function from then on. Out-of-memory errors and the
pack's own errors (an input the model refuses) are not compile failures: they are re-raised.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable
from typing import Any

import torch

from .errors import UNetLabError

log = logging.getLogger(__name__)


# Whether ``torch.compile`` is tracing the caller right now (always False on a torch without ``torch.compiler``);
# the function itself, not a wrapper, so hot paths pay one call.
is_compiling: Callable[[], bool] = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


@functools.cache
def triton_available() -> bool:
    """Whether Triton is installed (checked once; the fused kernels import it at their first launch)."""
    return importlib.util.find_spec("triton") is not None


def is_out_of_memory(error: BaseException) -> bool:
    """An allocator failure on any device (CUDA's OutOfMemoryError, or the host's message)."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    text = str(error).lower()
    return (oom is not None and isinstance(error, oom)) or "out of memory" in text or "can't allocate memory" in text


class CompiledCall:
    """``fn`` through ``torch.compile`` while that works, else ``fn`` itself.

    ``active`` tells whether the compiled path is still in use; ``error`` holds the failure
    (``"Type: first line"``) once there was one; ``on_fallback(exc)`` is called when it happens.
    """

    def __init__(self, fn: Callable[..., Any], what: str, *, mode: str | None = None, dynamic: bool | None = None,
                 backend: str = "inductor", on_fallback: Callable[[BaseException], None] | None = None) -> None:
        self.eager = fn
        self.what = what
        self.error: str | None = None
        self.on_fallback = on_fallback
        self._compiled: Callable[..., Any] | None = None
        options: dict[str, Any] = {}  # only what differs from torch.compile's defaults
        if mode is not None:
            options["mode"] = mode
        if dynamic is not None:
            options["dynamic"] = dynamic
        if backend != "inductor":
            options["backend"] = backend
        try:
            self._compiled = torch.compile(fn, **options)
        except Exception as exc:  # noqa: BLE001 - compiling is optional
            self._fail(exc)

    @property
    def active(self) -> bool:
        return self._compiled is not None

    def _fail(self, exc: BaseException) -> None:
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        self.error = f"{type(exc).__name__}: {first}"
        self._compiled = None
        log.warning("torch.compile failed for %s (%s); running it eagerly instead", self.what, self.error)
        if self.on_fallback is not None:
            self.on_fallback(exc)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is not None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - see the module docstring
                if is_out_of_memory(exc) or isinstance(exc, UNetLabError):
                    raise
                self._fail(exc)
        return self.eager(*args, **kwargs)
