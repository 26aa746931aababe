"""Fixtures every test file shares."""

from __future__ import annotations

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
