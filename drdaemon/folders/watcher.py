"""Finding frames in the inbox that are whole and no longer being written.

Three sources name candidate files: watchdog events (close-after-write, moved in, created),
a scan at start-up, and a periodic rescan, because inotify drops events under bursts and
is blind on network mounts (``watch.polling = true`` turns the observer off and scans every
``watch.poll_interval_s``). An event is only a hint: a candidate becomes *ready* when its
size and mtime have not changed for ``watch.stability_wait_s`` and it parses as a complete
image (:func:`drdaemon.io.readers.looks_complete`). A file that stays unchanged but never
looks complete (garbage with an image name) is released after ``watch.incomplete_grace_s``
so that it fails with a reason file instead of lingering in the inbox forever.
"""

from __future__ import annotations

import fnmatch
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from drdaemon.config import WatchConfig
from drdaemon.folders.claim import held_for_writing, is_hidden_or_temporary
from drdaemon.io.limits import DEFAULT_LIMITS, ReadLimits
from drdaemon.io.readers import FRAME_FORMATS, ReaderRegistry, looks_complete

log = structlog.get_logger(__name__)

#: Seconds between two completeness checks of a file that is stable but not yet whole.
_COMPLETENESS_RECHECK_S = 0.5
#: Seconds between attempts to restart a dead observer (an unmounted inbox fails each time).
_RESTART_BACKOFF_S = 5.0
#: First and longest wait before claiming again a file whose claim the filesystem refused.
CLAIM_RETRY_FIRST_S = 1.0
CLAIM_RETRY_MAX_S = 60.0
#: Unallocated bytes (holes) above which a file counts as pre-sized and not yet written.
_HOLE_SLACK_BYTES = 1 << 16
#: Directories named like frames that were reported once (bounded: the oldest are forgotten).
_REPORTED_MEMORY = 1024


@dataclass
class Candidate:
    """A file seen in the inbox, and what is known about its stability."""

    path: Path
    first_seen_wall: float
    first_seen_mono: float
    signature: tuple[int, int, int] | None = None  # (inode, size, mtime_ns)
    changed_mono: float = 0.0
    checked_complete_mono: float = float("-inf")
    complete: bool = False
    #: Times its claim was refused (an immutable file, one a share keeps locked), and when to try again.
    refusals: int = 0
    retry_mono: float = 0.0


def has_holes(st: os.stat_result) -> bool:
    """Whether a file has unwritten holes: a writer that pre-sized it (``ftruncate``) is not done.

    Filesystems that do not report allocated blocks (``st_blocks`` 0 for a non-empty file)
    say nothing here.
    """
    allocated = st.st_blocks * 512
    return allocated > 0 and allocated + _HOLE_SLACK_BYTES < st.st_size


def arrival(path: Path, now_mono: float) -> tuple[float, float]:
    """When ``path`` arrived in the inbox, as (wall-clock, monotonic) times.

    The arrival is the file's inode change time (ctime: its rename into the inbox, or its
    last write; unlike the mtime, a copy that keeps the source's mtime does not move it),
    never later than now. A frame that waited in the inbox while the daemon was down thus
    reports its wait, and its latency, from its arrival rather than from the restart.
    """
    now_wall = time.time()
    try:
        changed = os.lstat(path).st_ctime
    except OSError:
        return now_wall, now_mono
    waited = max(0.0, now_wall - changed)
    return now_wall - waited, now_mono - waited


class _EnqueueHandler(FileSystemEventHandler):
    """Turns watchdog events into candidate paths; never touches the file itself."""

    _RELEVANT = frozenset({EVENT_TYPE_CLOSED, EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_MOVED})

    def __init__(
        self, sink: queue.SimpleQueue[str], accepts: Callable[[str], bool], inbox: Path, lost: threading.Event
    ) -> None:
        super().__init__()
        self._sink = sink
        self._accepts = accepts
        self._inbox = os.fsdecode(inbox)
        self._lost = lost

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory and event.event_type in (EVENT_TYPE_DELETED, EVENT_TYPE_MOVED):
            if os.fsdecode(event.src_path).rstrip("/") == self._inbox.rstrip("/"):
                self._lost.set()  # the watched inbox itself went: this watch sees nothing any more
            return
        if event.is_directory or event.event_type not in self._RELEVANT:
            return
        path = event.dest_path if event.event_type == EVENT_TYPE_MOVED else event.src_path
        path = os.fsdecode(path)
        if self._accepts(os.path.basename(path)):
            self._sink.put(path)


class InboxWatcher:
    """Tracks inbox candidates and hands out those that are ready to claim.

    All methods except the event handler run on one thread (the daemon's intake loop).
    """

    def __init__(
        self,
        inbox: Path,
        config: WatchConfig,
        limits: ReadLimits = DEFAULT_LIMITS,
        formats: ReaderRegistry = FRAME_FORMATS,
    ) -> None:
        self.inbox = Path(inbox)
        self.config = config
        #: The reader's limits: the completeness check reads no more than the reader would.
        self.limits = limits
        #: The frame formats whose completeness check a candidate must pass (the reader's).
        self.formats = formats
        self._events: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._candidates: dict[Path, Candidate] = {}
        self._observer: BaseObserver | None = None
        self._next_scan_mono = 0.0  # scan at the first poll
        self._patterns = tuple(config.patterns)
        self._next_restart_mono = 0.0
        self._watched: tuple[int, int] | None = None  # (device, inode) of the inbox the observer watches
        self._lost = threading.Event()  # set by the observer when the watched inbox is deleted or moved
        #: Files in the inbox that no pattern takes, as of the last scan (each logged once when first seen).
        self._unmatched: set[str] = set()
        self._reported_dirs: dict[tuple[str, int], None] = {}  # directories named like frames, logged once

    # -- which names count --------------------------------------------------------------------
    def accepts(self, name: str) -> bool:
        if is_hidden_or_temporary(name):
            return False
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self._patterns)

    @property
    def unmatched(self) -> int:
        """Files in the inbox, as of the last scan, that no pattern takes (they are never processed)."""
        return len(self._unmatched)

    def _note_unmatched(self, names: set[str]) -> None:
        """Name each newly seen file that no pattern takes once in the log; forget those gone."""
        for name in sorted(names - self._unmatched):
            suffix = Path(name).suffix
            log.warning(
                "inbox_file_unmatched",
                file=name,
                patterns=list(self._patterns),
                note="no watch.patterns pattern takes this file, so it stays in the inbox unprocessed; "
                + (
                    f"if it is a frame in a readable format ({', '.join(self.formats.names())}), add a pattern "
                    f"such as {'*' + suffix!r} to watch.patterns"
                    if suffix
                    else "a DICOM file without a suffix needs a pattern naming it, e.g. 'IM*' or '*'"
                ),
            )
        self._unmatched = names

    # -- the observer -------------------------------------------------------------------------
    def start(self) -> None:
        if not self.config.polling:
            self._start_observer()

    def _inbox_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.inbox)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _start_observer(self) -> None:
        self._watched = self._inbox_identity()
        self._lost.clear()
        observer = Observer()
        handler = _EnqueueHandler(self._events, self.accepts, self.inbox, self._lost)
        observer.schedule(handler, str(self.inbox), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    @property
    def alive(self) -> bool:
        """True while frames can be noticed: the observer runs (or polling mode needs none)."""
        if self.config.polling:
            return self.inbox.is_dir()
        if self._observer is None or not self._observer.is_alive() or self._lost.is_set():
            return False
        # A deleted and re-created (or re-mounted) inbox is another directory: the old watch is blind.
        identity = self._inbox_identity()
        return identity is not None and identity == self._watched

    def ensure_observer(self) -> bool:
        """Restart a dead observer (e.g. the inbox was unmounted and came back); True if restarted."""
        if self.config.polling or self.alive:
            return False
        now = time.monotonic()
        if now < self._next_restart_mono:
            return False
        self._next_restart_mono = now + _RESTART_BACKOFF_S
        log.warning(
            "watcher_restart",
            inbox=str(self.inbox),
            cause="inbox replaced" if self._observer is not None and self._observer.is_alive() else "observer stopped",
        )
        if self._observer is not None:
            self._observer.stop()
            self._observer = None
        try:
            self._start_observer()
        except OSError as exc:
            log.error("watcher_restart_failed", inbox=str(self.inbox), error=str(exc))
            return False
        self._next_scan_mono = 0.0  # events were missed while it was down
        return True

    # -- candidates ---------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Frames waiting in the inbox, as far as the watcher knows."""
        return len(self._candidates)

    def tick_s(self) -> float:
        """How often :meth:`poll` should run to honour the stability wait closely."""
        return min(0.25, max(0.02, self.config.stability_wait_s / 4))

    def forget(self, path: Path) -> None:
        self._candidates.pop(path, None)

    @property
    def unclaimable(self) -> int:
        """Files whose claim was refused and that wait for their retry."""
        return sum(1 for c in self._candidates.values() if c.refusals)

    def defer(self, candidate: Candidate, now_mono: float | None = None) -> float:
        """The filesystem refused to claim ``candidate``: try again later, with backoff; the wait in seconds."""
        now = time.monotonic() if now_mono is None else now_mono
        candidate.refusals += 1
        wait = min(CLAIM_RETRY_MAX_S, CLAIM_RETRY_FIRST_S * 2 ** (candidate.refusals - 1))
        candidate.retry_mono = now + wait
        self._candidates.setdefault(candidate.path, candidate)
        return wait

    def poll(self, now_mono: float | None = None) -> list[Candidate]:
        """Take in events and scans, re-check every candidate; return the ready ones, oldest first."""
        now = time.monotonic() if now_mono is None else now_mono
        self._drain_events(now)
        if now >= self._next_scan_mono:
            self.scan(now)
            interval = self.config.poll_interval_s if self.config.polling else self.config.rescan_interval_s
            self._next_scan_mono = now + interval
        ready = [c for c in list(self._candidates.values()) if self._is_ready(c, now)]
        ready.sort(key=lambda c: (c.first_seen_mono, c.path.name))
        return ready

    def scan(self, now_mono: float | None = None) -> None:
        """Add every acceptable file in the inbox; the remedy for lost events."""
        now = time.monotonic() if now_mono is None else now_mono
        try:
            entries = list(os.scandir(self.inbox))
        except OSError as exc:
            log.error("inbox_scan_failed", inbox=str(self.inbox), error=str(exc))
            return
        unmatched: set[str] = set()
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if self.accepts(entry.name):
                    self._report_directory(Path(entry.path))
                continue
            # Symlinks, FIFOs, sockets and devices are candidates too: they are claimed and refused
            # with a reason (never opened), rather than left in the inbox unexplained.
            if self.accepts(entry.name):
                self._add(Path(entry.path), now)
            elif not is_hidden_or_temporary(entry.name):
                unmatched.add(entry.name)
        self._note_unmatched(unmatched)

    def _report_directory(self, path: Path) -> None:
        """A directory named like a frame is left where it is, and said so once."""
        try:
            inode = os.lstat(path).st_ino
        except OSError:
            return
        key = (os.fsdecode(path.name), inode)
        if key in self._reported_dirs:
            return
        self._reported_dirs[key] = None
        while len(self._reported_dirs) > _REPORTED_MEMORY:
            self._reported_dirs.pop(next(iter(self._reported_dirs)))
        log.warning(
            "inbox_directory_ignored",
            path=os.fsencode(path).decode("utf-8", "backslashreplace"),
            note="a directory named like a frame is not a frame; it stays in the inbox (move it away)",
        )

    def _drain_events(self, now: float) -> None:
        while True:
            try:
                path = Path(self._events.get_nowait())
            except queue.Empty:
                return
            if path.parent == self.inbox:
                self._add(path, now)

    def _add(self, path: Path, now: float) -> None:
        if path not in self._candidates:
            wall, mono = arrival(path, now)
            self._candidates[path] = Candidate(path, first_seen_wall=wall, first_seen_mono=mono)

    def _is_ready(self, candidate: Candidate, now: float) -> bool:
        try:
            st = os.stat(candidate.path, follow_symlinks=False)
        except FileNotFoundError:
            self.forget(candidate.path)  # claimed, renamed away or deleted by someone
            return False
        except OSError:
            return False
        if now < candidate.retry_mono:
            return False  # its claim was refused: not before its retry
        if not stat.S_ISREG(st.st_mode):
            if stat.S_ISDIR(st.st_mode):
                self._report_directory(candidate.path)
                self.forget(candidate.path)
                return False
            return True  # not a frame: claimed at once (a rename, nothing is opened) and refused
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if signature != candidate.signature:
            candidate.signature = signature
            candidate.changed_mono = now
            candidate.complete = False
            candidate.checked_complete_mono = float("-inf")
            return False
        stable_for = now - candidate.changed_mono
        if stable_for < self.config.stability_wait_s:
            return False
        if held_for_writing(candidate.path):
            # A writer that pre-sized the file or pauses between chunks: unchanged, but not done.
            candidate.changed_mono = now
            return False
        if not candidate.complete and now - candidate.checked_complete_mono >= _COMPLETENESS_RECHECK_S:
            candidate.checked_complete_mono = now
            candidate.complete = (
                st.st_size > 0 and not has_holes(st) and looks_complete(candidate.path, self.limits, self.formats)
            )
        if candidate.complete:
            return True
        # Stable but never whole: let the reader fail it with a reason rather than keep it forever.
        return stable_for >= self.config.incomplete_grace_s

    def still_ready(self, candidate: Candidate) -> bool:
        """Whether the file is unchanged since it was judged ready (checked right before claiming)."""
        try:
            st = os.stat(candidate.path, follow_symlinks=False)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode):
            return not stat.S_ISDIR(st.st_mode)
        return (st.st_ino, st.st_size, st.st_mtime_ns) == candidate.signature


__all__ = ["Candidate", "InboxWatcher", "arrival"]
