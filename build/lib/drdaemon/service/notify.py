"""The systemd notify protocol (``sd_notify``): a few datagrams on ``$NOTIFY_SOCKET``.

Under ``Type=notify`` systemd waits for ``READY=1`` before it calls the service started, and
with ``WatchdogSec=`` it kills and restarts the service when ``WATCHDOG=1`` stops arriving.
Outside systemd (a terminal, a test, a container) the variable is unset and every call is a
no-op, so the daemon code never has to ask where it runs. A failed send is logged and
ignored: losing a status line must never stop frames from being enhanced.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


def _address(path: str) -> str | bytes:
    # A leading '@' names a socket in the abstract namespace, spelled with a NUL byte.
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """How often to ping, in seconds: half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled advises.

    None when there is no watchdog, or when ``$WATCHDOG_PID`` names another process (the
    variables were inherited from a parent and are not meant for us).
    """
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 / 2 if value > 0 else None


class SystemdNotifier:
    """Send state changes to the service manager; inert when not started by systemd."""

    def __init__(self, socket_path: str | None = None) -> None:
        env = os.environ
        path = socket_path if socket_path is not None else env.get("NOTIFY_SOCKET", "")
        self.enabled: bool = bool(path)
        self.watchdog_interval_s: float | None = watchdog_interval(env, os.getpid()) if self.enabled else None
        self._address = _address(path) if path else None
        self._socket: socket.socket | None = None
        # The watchdog thread and the main thread may both send.
        self._lock = threading.Lock()

    def ready(self, status: str = "") -> None:
        """The daemon is up: configuration read, engine warm, watcher running."""
        self._send("READY=1", *self._status_lines(status))

    def watchdog(self) -> None:
        """Proof of life; call only when the daemon is actually making progress."""
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        """Shutdown has begun (the frame in progress is being finished)."""
        self._send("STOPPING=1", "STATUS=stopping: finishing the frame in progress")

    def status(self, text: str) -> None:
        """A one-line status shown by ``systemctl status``."""
        self._send(*self._status_lines(text))

    def extend_timeout(self, seconds: float) -> None:
        """Ask for more time to start or stop (e.g. a slow warm-up on a cold GPU)."""
        self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    @staticmethod
    def _status_lines(text: str) -> tuple[str, ...]:
        # One datagram carries newline-separated assignments, so a status must be one line.
        return (f"STATUS={' '.join(text.split())}",) if text else ()

    def _send(self, *lines: str) -> None:
        if not self.enabled or not lines:
            return
        message = "\n".join(lines).encode()
        if self._address is None:
            return
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.sendto(message, self._address)
            except OSError as exc:
                log.warning("systemd_notify_failed", message=lines[0], error=str(exc))
