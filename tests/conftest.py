"""Fixtures every test file shares."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from drdaemon.config import Folders, MetricsConfig
from tests.testkit import Station, make_folders, write_weights

#: The daemon's default metrics address and port (config.example.toml's too).
DEFAULT_METRICS = (MetricsConfig().address, MetricsConfig().port)

_HOLD = """
import select, socket, sys
sock = socket.socket()
while True:  # a daemon or another test session may hold it now: take it the moment it is let go
    try:
        sock.bind((sys.argv[1], int(sys.argv[2])))
        break
    except OSError:
        if select.select([sys.stdin], [], [], 0.01)[0]:
            sys.exit(0)  # the test session ended first
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
    """Hold the default metrics port from another process for the whole session.

    The suite must pass beside a running daemon (the README's first command serves metrics on
    127.0.0.1:9464): with the port held here too, a test that depends on it being free fails on
    every machine, not only on one where a daemon happens to run. Where something else holds it
    already (a daemon, another test session on the same machine, which lets it go when it ends),
    the holder takes it within 10 ms of its release, so it stays taken all session. Yields the port.
    """
    address, port = DEFAULT_METRICS
    free = _port_is_free(address, port)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, address, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        if free:  # wait for "held"; if another process took the port meanwhile, it is held all the same
            select.select([holder.stdout], [], [], 30)
        yield port
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(timeout=10)


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    """The daemon's default folders under the test's temporary folder, each created (empty)."""
    return make_folders(tmp_path)


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Station]:
    """A station's folders and config under the test's temporary folder; its daemon is killed if a test leaves it running."""
    s = Station(tmp_path)
    yield s
    if s.process is not None:
        s.kill()


@pytest.fixture
def tiny_weights(tmp_path: Path) -> Path:
    """A weights file of the tiny test network (one channel, illumination scale 1, seed 0) in the temporary folder."""
    path = tmp_path / "enhancer.safetensors"
    write_weights(path)
    return path
