"""The permissions a new file gets from the process umask, for files written through a temporary file.

``tempfile.mkstemp`` creates files with mode 0600 whatever the umask says, so a file written to a
temporary name and then renamed or linked into place would stay private to its owner, unlike
every file ComfyUI writes (0644 under the usual umask 022). ``make_like_new_file`` gives such a
file the mode ``open()`` would have given it: 0666 with the umask's bits cleared.

The umask is read from ``/proc/self/status`` where the kernel offers it; elsewhere it is read by
setting and restoring it (``os.umask`` has no read-only form), once per process.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.lru_cache(maxsize=1)
def _umask_fallback() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def current_umask() -> int:
    """The process umask."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _umask_fallback()


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file now: 0o666 without the umask's bits."""
    return 0o666 & ~current_umask()


def make_like_new_file(target: int | str | Path) -> None:
    """Give a file (an open descriptor or a path) the mode a newly created file would get."""
    if isinstance(target, int):
        os.fchmod(target, new_file_mode())
    else:
        os.chmod(target, new_file_mode())
