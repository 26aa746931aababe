"""How many reader and writer threads the daemon runs (``service.readers``, ``service.writers``).

Readers (read, hash, decode, window) and writers (encode, hash, write, fsync, sidecar) are
host work of about a hundred milliseconds per full frame, more than a GPU needs to enhance
it, so tying their counts to the number of engines capped the daemon below the GPU's rate.
Their default comes from the core count instead: half the cores each (the hashing,
compression and file I/O release the GIL), at most :data:`MAX_AUTO_THREADS`, and never fewer
than the engines, the count before these settings existed.
"""

from __future__ import annotations

import os

#: The most reader (or writer) threads the automatic default picks.
MAX_AUTO_THREADS = 6


def auto_threads(engines: int, cores: int | None = None) -> int:
    """The default reader (and writer) count for ``engines`` engines on ``cores`` logical cores."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, engines, min(MAX_AUTO_THREADS, cores // 2))


def stage_threads(engines: int, readers: int = 0, writers: int = 0, cores: int | None = None) -> tuple[int, int]:
    """``(readers, writers)``: the configured counts, or the default for a count of 0."""
    default = auto_threads(engines, cores)
    return (readers or default, writers or default)


__all__ = ["MAX_AUTO_THREADS", "auto_threads", "stage_threads"]
