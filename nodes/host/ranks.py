"""The headless runner under ``torchrun``: one rank's session (process group, host, logging).

Every rank runs the same workflow. Rank 0 writes into the real output and model folders
and prints the report; the other ranks get a host whose output, temp and model-save
folders are a private scratch folder deleted at the end, so nodes that save (Save Image,
Save Segmentation U-Net) write once without knowing about ranks. Files that each rank
writes its own share of (Segment Folder's masks) go through
``Host.shared_output_directory()``, the real output folder on every rank.

Outside a launch (a plain ``dev.py run``) the session is a single process and changes
nothing. Ranks other than 0 log warnings and errors only; every error line names the
rank, its node and host.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...unet_core import distributed
from ...unet_core.distributed import DistContext
from .standalone import StandaloneHost


class RankHost(StandaloneHost):
    """A standalone host for a rank other than 0: its saves land in a scratch folder."""

    name = "standalone-rank"

    def __init__(self, scratch: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shared_output = self._output
        self._scratch = scratch
        self._output = scratch / "output"
        self._temp = scratch / "temp"

    def save_directory(self, folder: str) -> Path:
        self._roots(folder)  # the same unknown-folder error as rank 0
        path = self._scratch / "models" / folder
        path.mkdir(parents=True, exist_ok=True)
        return path

    def shared_output_directory(self) -> Path:
        self._shared_output.mkdir(parents=True, exist_ok=True)
        return self._shared_output


@dataclass
class RankSession:
    """What the runner needs to know about this process's place in the job."""

    context: DistContext | None = None
    scratch: Path | None = None
    succeeded: bool = False
    _handlers: list[logging.Handler] = field(default_factory=list, repr=False)

    @property
    def is_main(self) -> bool:
        """True where the report is printed and shared files are written (rank 0, or alone)."""
        return self.context is None or self.context.is_main

    @property
    def prefix(self) -> str:
        """``"rank R/W (node N, host H): "`` in a job of several ranks, else empty."""
        if self.context is None or self.context.world_size == 1:
            return ""
        return f"{self.context.describe()}: "

    def make_host(self, **kwargs: Any) -> StandaloneHost:
        """The host this rank runs nodes in (``StandaloneHost`` arguments); progress bars on rank 0 only."""
        if self.context is not None:
            kwargs["device"] = self.context.device
        if self.is_main:
            return StandaloneHost(**kwargs)
        kwargs["show_progress"] = False
        return RankHost(self.scratch, **kwargs)


class _RankPrefix(logging.Filter):
    """Prefixes warnings and errors with the rank, and lets ranks other than 0 log nothing below WARNING."""

    def __init__(self, session: RankSession) -> None:
        super().__init__()
        self.session = session

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return self.session.is_main
        prefix = self.session.prefix
        if prefix and not getattr(record, "_rank_prefixed", False):
            record._rank_prefixed = True  # type: ignore[attr-defined]
            if prefix.rstrip(": ") in record.getMessage():  # a collective's error names the rank already
                return True
            text = str(record.msg)
            record.msg = f"error: {prefix}{text[len('error: '):]}" if text.startswith("error: ") else f"{prefix}{text}"
        return True


@contextlib.contextmanager
def rank_session(logger: logging.Logger, device: str | None = None,
                 timeout_s: float | None = None) -> Iterator[RankSession]:
    """Join the launch's job when launched by torchrun (else a single-process session), and leave it.

    On leaving, a session whose run ``succeeded`` waits for the other ranks (a barrier with
    the collective timeout), so rank 0 reports only when every rank finished; a failed
    one ends the process group at once, so peers waiting on it fail fast or time out.
    Raises DistributedError when joining or the final wait fails.
    """
    if not distributed.launched_by_torchrun():
        yield RankSession()
        return
    context = distributed.setup_from_env(device, timeout_s)
    scratch = None if context.is_main else Path(tempfile.mkdtemp(prefix=f"unet_lab_rank{context.rank}_"))
    session = RankSession(context=context, scratch=scratch)
    prefix_filter = _RankPrefix(session)
    for handler in logger.handlers:
        handler.addFilter(prefix_filter)
    try:
        yield session
    finally:
        try:
            distributed.teardown(clean=session.succeeded)
        finally:
            for handler in logger.handlers:
                handler.removeFilter(prefix_filter)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

