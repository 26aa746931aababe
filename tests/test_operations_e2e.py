"""A real daemon process, watched the way the plant watches it: systemd's notify socket,
a Prometheus scrape of /metrics, promtool, and the exit status systemd acts on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
from prometheus_client.parser import text_string_to_metric_families

from drdaemon.exits import EXIT_CONFIG
from tests import testkit
from tests.testkit import NAMED_FOLDERS, daemon_env, free_port, make_folders, metrics_on

pytestmark = pytest.mark.slow

FRAME_SHAPE = (96, 128)
START_TIMEOUT_S = 60.0

#: Every sample of an exposition, keyed by name and labels.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class FakeSystemd:
    """The service manager's end of $NOTIFY_SOCKET: a datagram socket that records messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def lines(self) -> list[str]:
        return [line for _, line in self.messages]

    def wait_for(self, line: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, got in list(self.messages):
                if got == line:
                    return at
            time.sleep(0.05)
        raise AssertionError(f"systemd never received {line!r}; got {self.lines()}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


def write_config(root: Path, port: int, extra: str = "") -> Path:
    """The five folders created under ``root`` and a config naming them, metrics on ``port``."""
    make_folders(root)
    return testkit.write_config(
        root / "config.toml",
        folders=NAMED_FOLDERS,
        watch="stability_wait_s = 0.2\nincomplete_grace_s = 0.5\nrescan_interval_s = 1.0\n",
        metrics=metrics_on(port),
        extra=extra,
    )


def start_daemon(config: Path, notify: Path | None, watchdog_usec: int | None = None) -> subprocess.Popen[str]:
    env = daemon_env()
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify)
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from drdaemon.cli import main; sys.exit(main())",
            "run",
            "--config",
            str(config),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def drop_frame(inbox: Path, name: str, seed: int) -> None:
    """Write a 16-bit frame beside the inbox and rename it in, as a careful station does."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(2000, 40000, size=FRAME_SHAPE, dtype=np.uint16)
    staging = inbox.parent / f".{name}"
    tifffile.imwrite(staging, frame)
    staging.rename(inbox / name)


def drop_garbage(inbox: Path, name: str) -> None:
    staging = inbox.parent / f".{name}"
    staging.write_bytes(b"this is not a TIFF file " * 40)
    staging.rename(inbox / name)


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def wait_for_metric(port: int, done: Callable[[Samples], bool], timeout: float) -> Samples:
    deadline = time.monotonic() + timeout
    samples: Samples = {}
    while time.monotonic() < deadline:
        samples = parse(scrape_text(port))
        if done(samples):
            return samples
        time.sleep(0.2)
    raise AssertionError(
        "metrics never reached the expected values: "
        + repr({k: v for k, v in samples.items() if k[0].startswith("drdaemon_frames")})
    )


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise
    return process.returncode, output


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    short = Path(f"/tmp/drd-{os.getpid()}-{time.monotonic_ns()}.sock")
    fake = FakeSystemd(short)
    yield fake
    fake.close()
    short.unlink(missing_ok=True)


def test_daemon_reports_to_systemd_and_prometheus(tmp_path: Path, systemd: FakeSystemd) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    process = start_daemon(config, systemd.path, watchdog_usec=1_000_000)
    try:
        ready_at = systemd.wait_for("READY=1", START_TIMEOUT_S)
        # READY means up: metrics served, the watcher running, nothing processed yet
        # (the warm-up frame is not a frame of the station's).
        before = parse(scrape_text(port))
        assert value(before, "drdaemon_watcher_up") == 1
        assert value(before, "drdaemon_frames_total", result="ok") == 0
        assert value(before, "drdaemon_frames_total", result="failed") == 0
        assert value(before, "drdaemon_pixels_total") == 0
        assert value(before, "drdaemon_frame_latency_seconds_count") == 0
        info = [labels for name, labels in before if name == "drdaemon_build_info"]
        assert len(info) == 1 and dict(info[0])["engine"] == "classical"
        # No empty label (Prometheus would drop it): no weights reads "none".
        assert dict(info[0])["weights_sha256"] == "none" and all(dict(info[0]).values())
        # No prometheus_client _created series beside the counters and histograms.
        assert "_created" not in scrape_text(port)

        for i in range(3):
            drop_frame(tmp_path / "inbox", f"frame-{i}.tif", seed=i)
        drop_garbage(tmp_path / "inbox", "broken.tif")

        def all_four_done(samples: Samples) -> bool:
            return (
                value(samples, "drdaemon_frames_total", result="ok") == 3
                and value(samples, "drdaemon_frames_total", result="failed") == 1
            )

        after = wait_for_metric(port, all_four_done, timeout=30)
        pixels = FRAME_SHAPE[0] * FRAME_SHAPE[1]
        assert value(after, "drdaemon_pixels_total") == 3 * pixels
        assert value(after, "drdaemon_frame_latency_seconds_count") == 3
        assert value(after, "drdaemon_frame_latency_seconds_sum") > 0
        read_errors = sum(
            v for (name, labels), v in after.items() if name == "drdaemon_errors_total" and ("stage", "read") in labels
        )
        assert read_errors == 1
        # Every stage of the CPU engine timed once per good frame, under the sidecar's words;
        # upload/compute/download are the learned engine's sub-stages, which CLAHE has not.
        sidecar = json.loads((tmp_path / "outbox" / "frame-0.tif.json").read_text())
        for stage in ("wait", "read", "window", "enhance", "write", "sidecar"):
            assert value(after, "drdaemon_stage_duration_seconds_count", stage=stage) == 3, stage
            assert stage == "sidecar" or stage in sidecar["timings"], stage
        for stage in ("upload", "compute", "download"):
            assert value(after, "drdaemon_stage_duration_seconds_count", stage=stage) == 0, stage
        assert not [name for name, _ in after if name.endswith("_created")]
        assert value(after, "drdaemon_last_success_timestamp_seconds") > time.time() - 120
        assert len(list((tmp_path / "failed").glob("broken*.reason.json"))) == 1

        # With WATCHDOG_USEC=1 s the daemon pings every 0.5 s while idle.
        time.sleep(1.5)
        pings = [at for at, line in systemd.messages if line == "WATCHDOG=1"]
        assert len(pings) >= 2 and min(pings) > ready_at
    finally:
        status, output = stop(process)
    stopping_at = systemd.wait_for("STOPPING=1", 5)
    assert stopping_at > max(at for at, line in systemd.messages if line == "WATCHDOG=1")
    assert status == 0, output
    # A clean stop leaves no lock file behind in work/.
    assert not (tmp_path / "work" / ".drdaemon.lock").exists()


def test_promtool_accepts_a_live_scrape(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus')")
    port = free_port()
    process = start_daemon(write_config(tmp_path, port), notify=None)
    try:
        drop_frame(tmp_path / "inbox", "frame.tif", seed=7)
        drop_garbage(tmp_path / "inbox", "broken.tif")
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                samples = parse(scrape_text(port))
                if (
                    value(samples, "drdaemon_frames_total", result="ok") == 1
                    and value(samples, "drdaemon_frames_total", result="failed") == 1
                ):
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "daemon did not process the frames"
            assert process.poll() is None, process.communicate()[0]
            time.sleep(0.2)
        text = scrape_text(port)
    finally:
        status, output = stop(process)
    assert status == 0, output
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_bad_config_exits_78_without_ready(tmp_path: Path, systemd: FakeSystemd) -> None:
    config = write_config(tmp_path, free_port(), extra="[engine_typo]\nname = 1\n")
    process = start_daemon(config, systemd.path)
    output, _ = process.communicate(timeout=START_TIMEOUT_S)
    # 78 is what the unit's RestartPreventExitStatus= names: systemd will not restart-loop.
    assert process.returncode == EXIT_CONFIG, output
    assert "engine_typo" in output
    time.sleep(0.2)
    assert "READY=1" not in systemd.lines()
