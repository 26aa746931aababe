"""End to end: a real ``drdaemon run`` process on temporary folders, as a station would use it."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from drdaemon.exits import EXIT_CONFIG
from tests.testkit import Station, frame_bytes, png_bytes

pytestmark = pytest.mark.slow


def test_frames_become_enhanced_outputs_with_sidecars_and_stop_is_graceful(station: Station) -> None:
    source = frame_bytes(1, (90, 70), resolution=((300, 1), (300, 1)), description="line 3", metadata=None)
    station.start()
    station.drop("plate.tif", source)
    station.wait_for(lambda: "plate.tif.json" in station.names("outbox"))
    assert station.stop() == 0
    station.assert_exactly_once({"plate.tif": source})
    with tifffile.TiffFile(station.dirs["outbox"] / "plate.tif") as tif:  # 16-bit round trip
        page = tif.pages[0]
        assert isinstance(page, tifffile.TiffPage)
        assert page.shape == (90, 70) and page.dtype == np.uint16
        assert page.tags["XResolution"].value == (300, 1)
        assert page.tags["ImageDescription"].value == "line 3"
    record = station.sidecars()[0]
    assert record.engine.name == "classical" and record.software.device == "cpu"
    assert set(record.timings) >= {"wait", "read", "enhance", "write"}
    events = [json.loads(line) for line in station.log.read_text().splitlines() if line.startswith("{")]
    done = [e for e in events if e["event"] == "frame_done"]
    assert len(done) == 1 and done[0]["frame"] == "plate.tif" and done[0]["input_bytes"] == len(source)


def test_slow_writer_is_never_read_early(station: Station) -> None:
    """A file written in place, in chunks, with pauses longer than the stability wait."""
    data = frame_bytes(2, (256, 256))
    station.start()
    station.wait_for(lambda: (station.dirs["work"] / ".drdaemon.lock").exists())
    target = station.dirs["inbox"] / "slow.tif"
    chunks = 8
    step = -(-len(data) // chunks)
    with target.open("wb") as fh:
        for start in range(0, len(data), step):
            # The part written so far has been stable for longer than the stability wait.
            assert station.names("outbox") == [] and station.names("failed") == []
            fh.write(data[start : start + step])
            fh.flush()
            time.sleep(0.45)  # > stability_wait_s, < incomplete_grace_s
    station.wait_for(lambda: "slow.tif.json" in station.names("outbox"))
    assert station.stop() == 0
    station.assert_exactly_once({"slow.tif": data})


def test_burst_of_200_frames_is_processed_exactly_once(station: Station) -> None:
    inputs = {f"b{index:03d}.tif": frame_bytes(index, (32, 48)) for index in range(200)}
    station.start()
    for name, data in inputs.items():
        station.drop(name, data)
    station.wait_for(lambda: len(station.names("archive")) == 200, timeout=120)
    assert station.stop() == 0
    station.assert_exactly_once(inputs)


def test_kill_9_at_random_moments_then_restart_gives_exactly_one_result_per_input(station: Station) -> None:
    rng = random.Random(7)
    inputs = {f"k{index:02d}.tif": frame_bytes(index, (512, 640)) for index in range(40)}
    for name, data in inputs.items():
        station.drop(name, data)
    hits_mid_frame = 0
    lock = station.dirs["work"] / ".drdaemon.lock"
    for attempt in range(16):
        if attempt >= 6 and hits_mid_frame >= 2:
            break
        station.start()
        # Once this process holds the work folder it recovers, claims and commits frames;
        # it is killed at a random moment of that.
        station.wait_for(
            lambda: (
                lock.exists()
                and station.process is not None
                and lock.read_text().split()[:1] == [str(station.process.pid)]
            )
        )
        time.sleep(rng.uniform(0.05, 0.5))
        station.kill()
        hits_mid_frame += any(n != ".drdaemon.lock" for n in station.names("work"))
    station.start()
    station.wait_for(lambda: len(station.names("archive")) == len(inputs), timeout=120)
    assert station.stop() == 0
    assert hits_mid_frame >= 1, "no kill landed while a frame was in progress"
    station.assert_exactly_once(inputs)


def oversized_header(path: Path) -> bytes:
    tifffile.imwrite(path, np.zeros((8, 8), np.uint16))
    with tifffile.TiffFile(path, mode="r+") as tif:
        page = tif.pages[0]
        assert isinstance(page, tifffile.TiffPage)
        page.tags["ImageWidth"].overwrite(100000)
        page.tags["ImageLength"].overwrite(100000)
    data = path.read_bytes()
    path.unlink()
    return data


def test_bad_files_land_in_failed_with_a_reason_while_good_frames_pass(station: Station, tmp_path: Path) -> None:
    good = frame_bytes(5, (120, 100))
    bad = {
        "corrupt.tif": b"II*\x00" + bytes(range(256)) * 40,
        "truncated.tif": good[: len(good) // 2],
        "zero.tif": b"",
        "notes.tif": b"this is not an image\n" * 50,
        "huge.tif": oversized_header(tmp_path / "h.tif"),
        "truncated.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 200,
    }
    expected = {
        "corrupt.tif": {"unreadable", "truncated"},
        "truncated.tif": {"truncated"},
        "zero.tif": {"empty"},
        "notes.tif": {"unreadable"},
        "huge.tif": {"too_large"},
        "truncated.png": {"unreadable", "truncated"},
    }
    goods = {f"good{index}.tif": frame_bytes(10 + index, (120, 100)) for index in range(4)}
    station.start()
    order = list(bad.items())
    for index, (name, data) in enumerate(order):
        station.drop(f"good{index}.tif", goods[f"good{index}.tif"]) if index < len(goods) else None
        station.drop(name, data)
    station.wait_for(
        lambda: len(station.names("archive")) == len(goods) and len(station.names("failed")) == 2 * len(bad), timeout=60
    )
    assert station.stop() == 0
    for name, data in bad.items():
        assert (station.dirs["failed"] / name).read_bytes() == data  # never modified
        reason = json.loads((station.dirs["failed"] / f"{name}.reason.json").read_text())
        assert reason["reason"] in expected[name], (name, reason)
        assert reason["stage"] == "read" and reason["error_class"] and reason["message"]
    assert sorted(Path(r.input.original_path).name for r in station.sidecars()) == sorted(goods)
    events = [json.loads(line) for line in station.log.read_text().splitlines() if line.startswith("{")]
    assert sorted(e["frame"] for e in events if e["event"] == "frame_failed") == sorted(bad)


def test_config_errors_exit_78_before_touching_anything(tmp_path: Path) -> None:
    station = Station(tmp_path, extra='[output]\ncompresion = "zstd"\n')
    station.start()
    assert station.process is not None
    assert station.process.wait(timeout=60) == EXIT_CONFIG
    station.process = None
    assert "output.compresion" in station.log.read_text() and "unknown key" in station.log.read_text()
    assert not station.dirs["inbox"].exists()


def test_frames_left_in_the_inbox_while_stopped_are_taken_at_start(station: Station) -> None:
    inputs = {"early.tif": frame_bytes(20)}

    pixels = np.random.default_rng(21).integers(0, 65535, (50, 60)).astype(np.uint16)
    inputs["early.png"] = png_bytes(pixels)
    for name, data in inputs.items():
        station.drop(name, data)
    station.start()
    station.wait_for(lambda: len(station.names("archive")) == 2)
    assert station.stop() == 0
    station.assert_exactly_once(inputs)
    # Both have the stem "early": the second one gets the documented collision name.
    assert sorted(n for n in station.names("outbox") if n.endswith(".tif")) == ["early.tif", "early~1.tif"]


def test_systemd_hears_ready_then_watchdog_then_stopping(tmp_path: Path) -> None:
    import socket

    station = Station(tmp_path)
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}
    with station.log.open("ab") as log:
        station.process = subprocess.Popen(
            [sys.executable, "-m", "drdaemon", "run", "--config", str(station.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
    try:
        messages: list[str] = []
        while sum("WATCHDOG=1" in m for m in messages) < 3:
            messages.append(listener.recv(4096).decode())
        assert (station.dirs["work"] / ".drdaemon.lock").exists()  # READY came after start-up
        station.drop("during.tif", frame_bytes(30))
        station.wait_for(lambda: "during.tif.json" in station.names("outbox"))
        station.process.send_signal(signal.SIGTERM)
        while not any("STOPPING=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        assert station.process.wait(timeout=60) == 0
        station.process = None
    finally:
        listener.close()
        if station.process is not None:
            station.kill()
    kinds = [
        next(k for k in ("READY=1", "WATCHDOG=1", "STOPPING=1") if k in m)
        for m in messages
        if any(k in m for k in ("READY=1", "WATCHDOG=1", "STOPPING=1"))
    ]
    assert kinds[0] == "READY=1" and kinds[-1] == "STOPPING=1"
    assert set(kinds[1:-1]) == {"WATCHDOG=1"}
