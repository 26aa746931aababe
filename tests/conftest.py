"""Fixtures every test file shares."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from drdaemon.config import MetricsConfig

#: The daemon's default metrics address and port (config.example.toml's too).
DEFAULT_METRICS = (MetricsConfig().address, MetricsConfig().port)

_HOLD = """
import socket, sys
sock = socket.socket()
sock.bind((sys.argv[1], int(sys.argv[2])))
sock.listen()
print("held", flush=True)
sys.stdin.read()  # until the test session closes the pipe
"""


def _port_is_free(address: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="session", autouse=True)
def default_metrics_port() -> Iterator[int]:
    """Hold the default metrics port from another process for the whole session, if it is free.

    The suite must pass beside a running daemon (the README's first command serves metrics on
    127.0.0.1:9464): with the port held here too, a test that depends on it being free fails on
    every machine, not only on one where a daemon happens to run. Yields the port.
    """
    address, port = DEFAULT_METRICS
    if not _port_is_free(address, port):
        yield port  # a daemon (or something else) already holds it: the same situation
        return
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, address, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        holder.stdout.readline()  # "held"; nothing if another process took the port meanwhile: held all the same
        yield port
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(timeout=10)
