"""Claiming a frame: one atomic rename from the inbox into ``work/``.

After the rename the frame belongs to this daemon alone; the station can write a new file
of the same name into the inbox without disturbing it. Whatever lies in ``work/`` when the
daemon starts was claimed by an earlier run that did not finish it, and is redone.
A lock file in ``work/`` makes sure only one daemon owns a work folder at a time.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

LOCK_NAME = ".drdaemon.lock"


class WorkFolderBusy(RuntimeError):
    """Another running daemon holds the work folder."""


def distinct_name(name: str, index: int) -> str:
    """``name`` itself for index 0, else ``<stem>~<index><suffix>`` (``a.tif`` -> ``a~2.tif``)."""
    if index == 0:
        return name
    path = Path(name)
    return f"{path.stem}~{index}{path.suffix}"


def free_name(target: Path) -> Path:
    """``target`` itself, or its first ``~N`` variant that names nothing on disk yet."""
    index = 0
    candidate = target
    while os.path.lexists(candidate):
        index += 1
        candidate = target.with_name(distinct_name(target.name, index))
    return candidate


def is_hidden_or_temporary(name: str) -> bool:
    """Names the daemon never treats as frames: dot-files, ``*.part`` and ``*.tmp``."""
    lowered = name.lower()
    return name.startswith(".") or lowered.endswith(".part") or lowered.endswith(".tmp")


@dataclass
class WorkItem:
    """A claimed frame and when it arrived (for the wait and latency figures)."""

    path: Path  # in work/
    original: Path  # where it was found (the inbox)
    arrived_wall: float = field(default_factory=time.time)
    arrived_mono: float = field(default_factory=time.monotonic)
    claimed_mono: float = field(default_factory=time.monotonic)

    @property
    def wait_s(self) -> float:
        return max(0.0, self.claimed_mono - self.arrived_mono)


class WorkLock:
    """An exclusive ``flock`` on ``work/.drdaemon.lock``; the kernel drops it when the process dies."""

    def __init__(self, work: Path) -> None:
        self.path = Path(work) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkFolderBusy(
                f"another drdaemon is using the work folder {self.path.parent} (lock {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim(candidate: Path, work: Path, arrived_wall: float, arrived_mono: float) -> WorkItem | None:
    """Move ``candidate`` into ``work`` under its own name (or a ``~N`` name when that is taken).

    Returns None when the file vanished before it could be claimed. Only the daemon holding
    the :class:`WorkLock` writes into ``work/``, so the existence check cannot race.
    """
    target = free_name(Path(work) / candidate.name)
    try:
        os.rename(candidate, target)
    except FileNotFoundError:
        return None
    return WorkItem(path=target, original=candidate, arrived_wall=arrived_wall, arrived_mono=arrived_mono)


def pending_work(work: Path) -> list[Path]:
    """Frames left in ``work/`` by an earlier run, oldest first."""
    items = [p for p in Path(work).iterdir() if p.is_file() and not is_hidden_or_temporary(p.name)]
    return sorted(items, key=lambda p: (p.stat().st_mtime_ns, p.name))
