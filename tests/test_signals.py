"""Stopping the daemon by hand: Ctrl-C says what it finishes, a second Ctrl-C stops at once, closing
the terminal stops a daemon started in it, and a second daemon on the same folders names the first."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import IO, Any

from drdaemon.exits import EXIT_BUSY
from tests.testkit import REPO, frame_bytes, wait_until, write_config

#: Frames are picked up quickly (the watch of every daemon here).
WATCH = "stability_wait_s = 0.1\nrescan_interval_s = 0.5\n"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

#: A daemon whose engine takes two minutes over a 50 x 70 frame (the others are quick and set a pace).
SLOW_SECOND_FRAME = """
import sys, time
from pathlib import Path
from drdaemon.config import load_settings
from drdaemon.engines.classical import ClassicalEngine
from drdaemon.logs import configure_logging
from drdaemon.service.daemon import Daemon

class SlowOnOneSize(ClassicalEngine):
    def enhance(self, frame, window=None):
        if frame.shape == (50, 70):
            Path(sys.argv[2]).touch()
            time.sleep(120)
        return super().enhance(frame, window)

settings = load_settings(Path(sys.argv[1]))
configure_logging(settings.logging)
sys.exit(Daemon(settings, engines=[SlowOnOneSize()]).run())
"""


def drop(root: Path, name: str, seed: int, shape: tuple[int, int] = (48, 64)) -> None:
    staged = root / f".{name}.part"
    staged.write_bytes(frame_bytes(seed, shape))
    staged.rename(root / "inbox" / name)


class Lines:
    """The lines a process writes, collected by a thread so that the test can wait for one."""

    def __init__(self, stream: IO[str] | None) -> None:
        self.lines: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events() if e.get("event") == name), None)


def test_ctrl_c_says_what_it_finishes_and_a_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", watch=WATCH)
    marker = tmp_path / "enhancing-the-slow-frame"
    daemon = subprocess.Popen(
        [sys.executable, "-c", SLOW_SECOND_FRAME, str(config), str(marker)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=ENV,
        start_new_session=True,
    )
    try:
        err = Lines(daemon.stderr)
        wait_until(lambda: err.event("daemon_ready") is not None, 60, "the daemon to start")
        drop(tmp_path, "quick.tif", 1)
        wait_until((tmp_path / "outbox" / "quick.tif.json").exists, 30, "the quick frame")
        drop(tmp_path, "slow.tif", 2, shape=(50, 70))
        wait_until(marker.exists, 30, "the slow frame's enhancement to begin")

        daemon.send_signal(signal.SIGINT)
        wait_until(lambda: err.event("stopping") is not None, 10, "the stopping line")
        stopping = err.event("stopping")
        assert stopping is not None
        assert stopping["signal"] == "SIGINT" and stopping["in_flight"] == 1
        assert stopping["finishing"] == ["slow.tif"]  # what is being finished
        assert stopping["expected_s"] is not None and stopping["expected_s"] < 30  # roughly how long (the pace)
        assert "Ctrl-C again stops at once" in stopping["note"]
        assert daemon.poll() is None  # still finishing the slow frame

        daemon.send_signal(signal.SIGINT)
        assert daemon.wait(timeout=10) == 128 + signal.SIGINT  # at once, not after the two minutes
        time.sleep(0.2)  # the reader thread takes the last line
        now = err.event("stopping_now")
        assert now is not None and "finished or redone at the next start" in now["note"], err.lines[-5:]
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert [p.name for p in (tmp_path / "work").iterdir() if p.name == "slow.tif"] == ["slow.tif"]
    assert not (tmp_path / "outbox" / "slow.tif").exists()

    # The next start recovers the frame, as after a crash.
    again = subprocess.Popen(
        [sys.executable, "-m", "drdaemon", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
        env=ENV,
        start_new_session=True,
    )
    try:
        wait_until((tmp_path / "outbox" / "slow.tif.json").exists, 60, "the recovered frame")
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=30) == 0
    finally:
        if again.poll() is None:
            again.kill()
            again.wait()


def _set_controlling_terminal() -> None:  # in the child, after setsid: stdin (the pty's slave) becomes its terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def read_until(master: int, needle: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {needle!r}; got {seen[-2000:]!r}"
        ready, _, _ = select.select([master], [], [], min(left, 0.5))
        if ready:
            try:
                seen += os.read(master, 65536)
            except OSError:
                break
    return seen


def test_closing_the_terminal_stops_a_daemon_started_in_it(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", watch=WATCH)
    master, slave = pty.openpty()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "drdaemon", "run", "--config", str(config)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=tmp_path,
        env=ENV,
        start_new_session=True,
        preexec_fn=_set_controlling_terminal,
    )
    os.close(slave)
    try:
        read_until(master, b"daemon_ready", 60)
        drop(tmp_path, "a.tif", 1)
        read_until(master, b"frame_done", 30)
        os.close(master)  # the terminal window closes: the kernel hangs up its session
        master = -1
        assert daemon.wait(timeout=30) == 0  # a clean stop, not an orphan and not a crash
    finally:
        if master >= 0:
            os.close(master)
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert not (tmp_path / "work" / ".drdaemon.lock").exists()  # released cleanly: the next run may start
    assert (tmp_path / "outbox" / "a.tif.json").exists()


def test_a_second_daemon_on_the_same_work_folder_names_the_pid_and_host_of_the_first(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", watch=WATCH)
    first = subprocess.Popen(
        [sys.executable, "-m", "drdaemon", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=ENV,
        start_new_session=True,
    )
    try:
        err = Lines(first.stderr)
        wait_until(lambda: err.event("daemon_ready") is not None, 60, "the first daemon")
        second = subprocess.run(
            [sys.executable, "-m", "drdaemon", "run", "--config", str(config)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=ENV,
            timeout=60,
            start_new_session=True,
        )
        assert second.returncode == EXIT_BUSY
        assert f"pid {first.pid} on host {socket.gethostname()}" in second.stderr, second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)


def test_run_without_a_configuration_says_where_its_folders_are_and_creates_no_inbox(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if not k.startswith("DRDAEMON_")}
    done = subprocess.run(
        [sys.executable, "-m", "drdaemon", "run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=20,
        start_new_session=True,
    )
    assert done.returncode == 78, done.stderr
    assert "no --config" in done.stderr and f"inbox {tmp_path / 'inbox'}" in done.stderr
    assert f"folders.inbox: {tmp_path / 'inbox'} does not exist" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created in the current directory
