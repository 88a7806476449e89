"""Progress reporting from node functions that also honours the user's cancel button."""

from __future__ import annotations

from typing import Any

from .host import get_host


def interruptible(report: Any) -> Any:
    """``report`` (a host progress callback) wrapped so each call first lets the host stop the run
    (ComfyUI's cancel button); the arguments pass through as given, so ``report``'s defaults hold."""
    host = get_host()

    def call(*args: Any) -> None:
        host.check_interrupted()
        report(*args)

    return call


def progress_callback(total: int, unique_id: Any) -> Any:
    """A progress callback reporting to the host, that stops the run when the user interrupts it."""
    return interruptible(get_host().progress(total, None if unique_id is None else str(unique_id)))
