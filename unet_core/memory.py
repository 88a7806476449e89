"""How much memory the machine has free, without extra dependencies."""

from __future__ import annotations

import os


def available_ram() -> int:
    """Bytes of RAM available to new allocations (MemAvailable on Linux, free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
