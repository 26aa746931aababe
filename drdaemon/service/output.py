"""Output faults: a full, read-only, unwritable or vanished folder is not the frame's fault.

When the outbox (or archive, failed or work) refuses a write, every frame would fail the
same way, so quarantining them would turn a disk-full hour into a shift of ``failed/``.
Instead the writer holds its frame, the intake stops claiming, the daemon says why (a log
line and ``drdaemon_output_blocked{reason}``), re-creates deleted folders, retries with
backoff and resumes by itself when the fault clears.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterable
from pathlib import Path

import structlog

from drdaemon.errors import FrameError, Stage
from drdaemon.folders.mounts import FolderUnmounted, MountWatch
from drdaemon.service.prometheus import DaemonMetrics

log = structlog.get_logger(__name__)

#: errno -> the ``reason`` label of ``drdaemon_output_blocked``.
_BLOCKING = {
    errno.ENOSPC: "disk_full",
    errno.EDQUOT: "disk_full",
    errno.EROFS: "read_only",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.ENOENT: "missing",
    errno.ENOTDIR: "missing",
    errno.EIO: "io_error",
    errno.ESTALE: "io_error",
    errno.ENOTCONN: "io_error",
    errno.EHOSTDOWN: "io_error",
}
#: First and longest pause between two attempts at a blocked commit.
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 10.0


def blocking_reason(error: BaseException) -> str | None:
    """The output fault behind ``error`` (a write-stage failure caused by one of the errnos above)."""
    if isinstance(error, FrameError) and error.stage is not Stage.WRITE:
        return None
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__
    if cause is None or isinstance(cause, FileExistsError):
        return None
    if isinstance(cause, FolderUnmounted):
        return "unmounted"
    return _BLOCKING.get(cause.errno or 0)


class OutputGate:
    """Whether frames can be committed now; shared by the writer threads, the intake and the supervisor.

    Two things close it: a fault a commit ran into (:meth:`block`, cleared by the next commit
    that succeeds) and free space below ``[retention] claim_min_free_space`` on the output side
    (:meth:`set_low_space`, cleared by a reading above it). A fault is shown before low space.
    """

    def __init__(self, metrics: DaemonMetrics, folders: Iterable[Path], mounts: MountWatch | None = None) -> None:
        self.metrics = metrics
        self.folders = [Path(f) for f in folders]
        #: Where each folder's filesystem began at start; None: folders are re-created with their parents.
        self.mounts = mounts
        self._lock = threading.Lock()
        self._fault: str | None = None
        self._low_space = False
        self._shown: str | None = None
        self.open = threading.Event()
        self.open.set()

    @property
    def reason(self) -> str | None:
        return self._shown

    def block(self, reason: str, error: BaseException) -> None:
        with self._lock:
            self._fault = reason
        self._publish(str(error))

    def clear(self) -> None:
        with self._lock:
            self._fault = None
        self._publish("")

    def set_low_space(self, low: bool, detail: str = "") -> None:
        """The output side's free space is below the claim floor (``low``), or back above it."""
        with self._lock:
            self._low_space = low
        self._publish(detail)

    def _publish(self, detail: str) -> None:
        with self._lock:
            reason = self._fault if self._fault is not None else ("low_space" if self._low_space else None)
            was, self._shown = self._shown, reason
            if reason is None:
                self.open.set()
            else:
                self.open.clear()
        if reason == was:
            return
        self.metrics.set_output_blocked(reason)
        if reason is None:
            log.info("output_resumed", was=was)
        elif reason == "low_space":
            log.error(
                "output_blocked",
                reason=reason,
                error=detail,
                note="claiming paused until the output side has the configured free space again",
            )
        else:
            log.error(
                "output_blocked",
                reason=reason,
                error=detail,
                note="frames are held (not failed) and retried; claiming paused until it clears",
            )

    def recreate_folders(self) -> None:
        """Re-create a deleted outbox (or archive, failed); a folder still refused stays refused.

        Never a vanished mount point, nor a folder whose filesystem went away
        (:meth:`~drdaemon.folders.mounts.MountWatch.may_recreate`): that waits for its share.
        """
        for folder in self.folders:
            if folder.is_dir():
                continue
            if self.mounts is not None and not self.mounts.may_recreate(folder):
                continue
            try:
                folder.mkdir(parents=self.mounts is None, exist_ok=True)
            except OSError:
                continue
            log.info("folder_created", path=str(folder), note="re-created after it vanished")


__all__ = ["BACKOFF_FIRST_S", "BACKOFF_MAX_S", "OutputGate", "blocking_reason"]
