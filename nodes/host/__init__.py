"""Host selection: the only place that knows whether ComfyUI runs us.

``get_host()`` returns the host set by ``use_host``/``set_host`` (the stub
executor and tests set one), else ComfyUI's when ComfyUI is running (its
modules are already imported), else a default standalone host.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from .base import MODEL_EXTENSIONS, MODEL_FOLDERS, Host
from .standalone import StandaloneHost

__all__ = ["Host", "StandaloneHost", "MODEL_FOLDERS", "MODEL_EXTENSIONS", "get_host", "set_host", "use_host"]

_current: Host | None = None
_default: Host | None = None


def _comfy_running() -> bool:
    return "folder_paths" in sys.modules and "comfy.model_management" in sys.modules


def get_host() -> Host:
    """The host nodes run in now."""
    global _default
    if _current is not None:
        return _current
    if _default is None:
        if _comfy_running():
            from .comfy import ComfyHost

            _default = ComfyHost()
        else:
            _default = StandaloneHost()
    return _default


def set_host(host: Host | None) -> None:
    """Make ``host`` current (None: back to automatic selection)."""
    global _current
    _current = host


@contextlib.contextmanager
def use_host(host: Host) -> Iterator[Host]:
    """Run a block with ``host`` current, then restore the previous one."""
    global _current
    previous = _current
    _current = host
    try:
        yield host
    finally:
        _current = previous
