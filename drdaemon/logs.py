"""Structured logging: one JSON object per line for the journal, readable lines on a terminal.

Every event is a name plus key/value pairs (``frame_done frame=... bytes=... timings=...``),
so the journal can be filtered with ``jq`` and nothing has to be parsed out of prose.
"""

from __future__ import annotations

import errno
import logging
import sys
import threading
import time
from collections import OrderedDict
from typing import TextIO

import structlog

from drdaemon.config import LoggingConfig


def use_json(config: LoggingConfig, stream: TextIO) -> bool:
    """JSON unless asked for console, or left on ``auto`` with a terminal attached."""
    if config.format == "json":
        return True
    if config.format == "console":
        return False
    return not stream.isatty()


class _PrintLogger(structlog.PrintLogger):
    """A print logger that drops a line a closed terminal refuses (EIO) instead of raising.

    A daemon started in a terminal stops when the terminal closes (SIGHUP); until the signal
    is handled, a thread that logs would otherwise fail its frame, or the daemon, on the write.
    """

    def msg(self, message: str) -> None:
        try:
            super().msg(message)
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _StreamLoggerFactory:
    """Print loggers on a given stream, or on whatever ``sys.stderr`` is when a logger is made."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def __call__(self, *args: object) -> structlog.PrintLogger:
        return _PrintLogger(self._stream if self._stream is not None else sys.stderr)


#: Seconds during which a library's repeated message (same logger, same text) is logged once.
REPEAT_QUIET_S = 600.0
#: Distinct library messages remembered for that (the oldest are forgotten).
_REPEAT_MEMORY = 256


class LibraryLogForwarder(logging.Handler):
    """Messages libraries log through :mod:`logging` (tifffile's warnings about a damaged file),
    as ``library_log`` events of the process's structured log, each text once per
    :data:`REPEAT_QUIET_S` (the watcher looks at an incomplete file every half second)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._seen_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a library's bad format string must not break logging
            message = str(record.msg)
        key = (record.name, message)
        now = time.monotonic()
        with self._seen_lock:
            last = self._seen.pop(key, None)
            if last is not None and now - last < REPEAT_QUIET_S:
                self._seen[key] = last
                return
            self._seen[key] = now
            while len(self._seen) > _REPEAT_MEMORY:
                self._seen.popitem(last=False)
        level = "error" if record.levelno >= logging.ERROR else "warning"
        getattr(structlog.get_logger(record.name), level)(
            "library_log", logger=record.name, level_name=record.levelname, message=message
        )


def _forward_library_logs() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, LibraryLogForwarder):
            root.removeHandler(handler)
    root.addHandler(LibraryLogForwarder())
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)


def configure_logging(config: LoggingConfig, stream: TextIO | None = None) -> None:
    """Set up structlog for the whole process (logging configuration is process-wide by nature)."""
    explicit = stream is not None
    stream = stream if stream is not None else sys.stderr
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json(config, stream):
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, config.level)),
        logger_factory=_StreamLoggerFactory(stream if explicit else None),
        # Not cached, so that a logger made before a test swapped sys.stderr writes to the new one.
        cache_logger_on_first_use=False,
    )
    # Libraries' own log lines join the structured log, instead of plain lines in a JSON stream.
    _forward_library_logs()


__all__ = ["LibraryLogForwarder", "configure_logging", "use_json"]
