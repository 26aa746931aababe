"""Free space of the filesystem a folder lives on: the figure that retention, the claim floor and the
``drdaemon_folder_free_bytes`` gauge read.

Callers take the reading as a function (:data:`FreeBytes`) so that tests can say how full a
disk is without filling one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

#: Bytes an unprivileged process may still write on the filesystem of a folder.
FreeBytes = Callable[[Path], int]


def free_bytes(folder: Path) -> int:
    """Bytes available to an unprivileged writer on ``folder``'s filesystem (what ``df`` shows as Avail)."""
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


__all__ = ["FreeBytes", "free_bytes"]
