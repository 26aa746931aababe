"""Claiming a frame: one atomic rename from the inbox into ``work/``.

After the rename the frame belongs to this daemon alone; the station can write a new file
of the same name into the inbox without disturbing it. Whatever lies in ``work/`` when the
daemon starts was claimed by an earlier run that did not finish it, and is redone.
A lock file in ``work/`` makes sure only one daemon owns a work folder at a time.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from drdaemon.io.durable import ID_HEX, NAME_MAX, Owner, current_owner, fsync_directory

LOCK_NAME = ".drdaemon.lock"


class WorkFolderBusy(RuntimeError):
    """Another running daemon holds the work folder."""


def distinct_name(name: str, index: int) -> str:
    """``name`` itself for index 0, else ``<stem>~<index><suffix>`` (``a.tif`` -> ``a~2.tif``).

    A stem too long to take ``~<index>`` within NAME_MAX bytes is cut to fit.
    """
    if index == 0:
        return name
    path = Path(name)
    tail = f"~{index}{path.suffix}"
    stem = os.fsencode(path.stem)[: NAME_MAX - len(os.fsencode(tail))]
    return os.fsdecode(stem) + tail


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
    #: Times the file was found changed after its claim (a writer still at work).
    changes: int = 0
    #: (inode, size, mtime_ns) right after the claim; the read refuses a file that changed since.
    claimed_signature: tuple[int, int, int] | None = None

    @property
    def wait_s(self) -> float:
        return max(0.0, self.claimed_mono - self.arrived_mono)


def held_for_writing(path: Path) -> bool:
    """Whether some process on this host has ``path`` open for writing (False when it cannot tell).

    Asks the kernel for a read lease, which it grants only when nobody has the file open for
    writing. The lease is released at once. A lease break would send SIGIO, so this check
    runs only where SIGIO is ignored (the daemon ignores it); it needs the file's owner (or
    CAP_LEASE) and a local filesystem, and is skipped elsewhere.
    """
    if signal.getsignal(signal.SIGIO) != signal.SIG_IGN:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except BlockingIOError:
        return True  # EAGAIN: open for writing elsewhere
    except OSError:
        return False  # not the owner, or a filesystem without leases
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


@dataclass
class _Settling:
    item: WorkItem
    signature: tuple[int, int, int] | None
    since_mono: float


class SettlingWork:
    """Claimed frames that changed after their claim, waiting in ``work/`` until they settle.

    A writer that pre-sizes its file and fills it with pauses, or one that goes on writing
    through an open descriptor, changes the frame after the daemon claimed it. Such a frame
    is read again once it has not changed for ``wait_s`` and nobody holds it open for writing.
    Writer threads add, the intake thread takes.
    """

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._items: list[_Settling] = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def add(self, item: WorkItem) -> None:
        with self._lock:
            self._items.append(_Settling(item, _signature(item.path), time.monotonic()))

    def settled(self, now_mono: float | None = None) -> list[WorkItem]:
        """The frames unchanged for the wait and not held open for writing; they leave the list."""
        now = time.monotonic() if now_mono is None else now_mono
        ready: list[WorkItem] = []
        with self._lock:
            waiting = []
            for entry in self._items:
                signature = _signature(entry.item.path)
                if signature != entry.signature or held_for_writing(entry.item.path):
                    entry.signature, entry.since_mono = signature, now
                    waiting.append(entry)
                elif now - entry.since_mono >= self.wait_s:
                    entry.item.claimed_signature = signature  # what the next read must find
                    ready.append(entry.item)
                else:
                    waiting.append(entry)
            self._items = waiting
        return ready


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class WorkLock:
    """An exclusive ``flock`` on ``work/.drdaemon.lock``; the kernel drops it when the process dies.

    A clean release removes the file, while still holding the lock. Another daemon may have
    opened the file just before and then get its lock on the removed inode, which guards
    nothing any more: so :meth:`acquire` checks, once locked, that the name still leads to the
    locked file, and locks the new one if not. A file left by a killed daemon is harmless.
    """

    #: Times :meth:`acquire` locks again when the file it locked was removed meanwhile.
    ATTEMPTS = 5

    def __init__(self, work: Path) -> None:
        self.path = Path(work) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        for _ in range(self.ATTEMPTS):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder_text(fd)
                os.close(fd)
                raise WorkFolderBusy(
                    f"another drdaemon ({holder}) is using the work folder {self.path.parent} (lock {self.path}); "
                    "stop that one first (under systemd: systemctl stop drdaemon), or give this one another work folder"
                ) from None
            if _names_file(self.path, fd):
                break
            os.close(fd)  # the last holder removed it as we locked it: lock the file there now
        else:
            raise WorkFolderBusy(f"the lock file {self.path} keeps being replaced; is another drdaemon starting?")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())  # who holds it, for the next one's message
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file (if it is still this lock's) and then unlock it."""
        if self._fd is not None:
            if _names_file(self.path, self._fd):
                self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_holder_text(fd: int) -> str:
    """``pid N on host H`` from a held lock file (its holder writes ``PID HOST``), or what is known."""
    try:
        fields = os.pread(fd, 512, 0).decode("utf-8", "replace").split()
    except OSError:
        fields = []
    if not fields or not fields[0].isdigit():
        return "pid unknown: the lock file does not name it yet"
    host = fields[1] if len(fields) > 1 else "unknown"
    here = " (this host)" if host == socket.gethostname() else ""
    return f"pid {fields[0]} on host {host}{here}"


def _names_file(path: Path, fd: int) -> bool:
    """Whether ``path`` is the very file open as ``fd`` (not removed, not replaced)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def work_identity(work: Path) -> str:
    """The work folder's identity: a hash of this host's name, the folder's real path and its inode.

    Temporaries name it, so that a daemon's start-up removes the leftovers of earlier runs
    over its own work folder and never those of a peer sharing the outbox (whose proof of a
    half-made commit they may be), even a peer on a host or in a container of the same name
    whose pids repeat. It stays the same across restarts as long as the folder is not
    re-created; nothing is written for it.
    """
    real = os.path.realpath(work)
    inode = os.stat(real).st_ino
    text = f"{socket.gethostname()}\0{real}\0{inode}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:ID_HEX]


def work_owner(work: Path) -> Owner:
    """This process as the owner of the temporaries of the daemon over ``work``."""
    return current_owner(work_identity(work))


def sync_data(path: Path) -> None:
    """fsync a regular file's data (without following a link); a no-op for anything else.

    A station may have written the frame without an fsync of its own: the claim makes the
    data durable before the frame's inbox entry disappears, so that a power cut can never
    leave an archived frame of zero bytes while its inbox entry is gone.
    """
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return  # never opened (a FIFO, a device): the read refuses it unopened
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return  # vanished, or unreadable: nothing this daemon could make durable (the read says why)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fsync(fd)
    finally:
        os.close(fd)


def claim(candidate: Path, work: Path, arrived_wall: float, arrived_mono: float) -> WorkItem | None:
    """Move ``candidate`` into ``work`` under its own name (or a ``~N`` name when that is taken).

    The frame's data is flushed first, then renamed, then both folders are flushed: data,
    then name. Returns None when the file vanished before it could be claimed; raises
    ``OSError`` when it cannot be renamed (an immutable file, one a share keeps locked).
    Only the daemon holding the :class:`WorkLock` writes into ``work/``, so the existence
    check cannot race.
    """
    target = free_name(Path(work) / candidate.name)
    sync_data(candidate)
    try:
        os.rename(candidate, target)
    except FileNotFoundError:
        return None
    # Durable before any result exists: after a power cut the frame must not be back in the inbox.
    fsync_directory(target.parent)
    fsync_directory(candidate.parent)
    return WorkItem(
        path=target,
        original=candidate,
        arrived_wall=arrived_wall,
        arrived_mono=arrived_mono,
        claimed_signature=_signature(target),
    )


def pending_work(work: Path) -> list[Path]:
    """Frames left in ``work/`` by an earlier run, oldest first."""
    items = [
        p for p in Path(work).iterdir() if not is_hidden_or_temporary(p.name) and not stat.S_ISDIR(p.lstat().st_mode)
    ]
    return sorted(items, key=lambda p: (p.lstat().st_mtime_ns, p.name))
