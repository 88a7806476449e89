"""Progress reporting that does not know its host.

Long work in ``unet_core`` takes an optional ``progress`` callback with the
signature ``progress(done, total, message="")``. Nodes pass the host's reporter
(ComfyUI's ProgressBar, or a terminal line standalone).
"""

from __future__ import annotations

from typing import Protocol


class ProgressCallback(Protocol):
    def __call__(self, done: int, total: int, message: str = "") -> None: ...


def no_progress(done: int, total: int, message: str = "") -> None:
    """The default callback: reports nothing."""
