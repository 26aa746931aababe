"""Structured logging: one JSON object per line for the journal, readable lines on a terminal.

Every event is a name plus key/value pairs (``frame_done frame=... bytes=... timings=...``),
so the journal can be filtered with ``jq`` and nothing has to be parsed out of prose.
"""

from __future__ import annotations

import errno
import logging
import sys
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


__all__ = ["configure_logging", "use_json"]
