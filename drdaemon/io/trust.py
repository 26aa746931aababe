"""Files a service runs must not be replaceable by others: group- or world-writable weights are refused.

The way sshd treats a private key or an ``authorized_keys`` file (``StrictModes``): a weights
file decides every pixel the service writes, so one that anybody but its owner may write, or
that lies in a folder where anybody may replace it, is refused with a message saying how to fix
it. A folder with the sticky bit (``/tmp``-like) lets nobody replace another user's file, so it
passes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UntrustedFile(PermissionError):
    """A file (or its folder) is writable by users other than its owner."""


def _writable_by_others(mode: int) -> str | None:
    who = [w for bit, w in ((stat.S_IWGRP, "its group"), (stat.S_IWOTH, "everybody")) if mode & bit]
    return " and ".join(who) if who else None


def check_not_writable_by_others(path: Path, what: str) -> None:
    """Raise :class:`UntrustedFile` when ``path`` or the folder holding it may be written by others.

    ``what`` names the file in the message (``engine.weights``). Symbolic links are resolved:
    the file that is read and the folder that holds it are checked.
    """
    real = Path(os.path.realpath(path))
    mode = os.stat(real).st_mode
    who = _writable_by_others(mode)
    if who is not None:
        raise UntrustedFile(
            f"{what} {real} is writable by {who} (mode {stat.S_IMODE(mode):04o}): anyone could replace the "
            f"model this service runs. Fix: chmod go-w {real}"
        )
    folder = real.parent
    folder_mode = os.stat(folder).st_mode
    who = _writable_by_others(folder_mode)
    if who is not None and not folder_mode & stat.S_ISVTX:
        raise UntrustedFile(
            f"{what} {real} lies in {folder}, which is writable by {who} (mode {stat.S_IMODE(folder_mode):04o}): "
            f"anyone could put another file in its place. Fix: chmod go-w {folder} (or keep the weights elsewhere)"
        )


__all__ = ["UntrustedFile", "check_not_writable_by_others"]
