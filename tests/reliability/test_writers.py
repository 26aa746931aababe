"""Fault 2: writers that pre-size their file, pause, or go on writing after a claim never get a frame
committed from bytes that are not its final content."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from drdaemon.config import Folders
from drdaemon.engines import ClassicalEngine
from drdaemon.engines.base import Enhanced
from drdaemon.folders.claim import claim
from drdaemon.folders.commit import Finisher, FrameChanged
from drdaemon.io.limits import ReadLimits
from drdaemon.io.sidecar import Sidecar
from drdaemon.kernels.window import Window
from drdaemon.service.frame import commit_frame, enhance_frame, load_frame
from tests.reliability.plant import Plant, ledger
from tests.testkit import daemon_settings, frame_bytes, run_until, sha

pytestmark = pytest.mark.reliability

SHAPE = (256, 320)


def write_in_chunks(path: Path, data: bytes, chunks: int, pause_s: float, presize: bool) -> None:
    """A station's writer: optionally allocate the full size first, then fill it with pauses between chunks."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if presize:
            os.ftruncate(fd, len(data))  # the full size at once, zero-filled
        step = -(-len(data) // chunks)
        for start in range(0, len(data), step):
            os.pwrite(fd, data[start : start + step], start)
            if start + step < len(data):
                time.sleep(pause_s)
    finally:
        os.close(fd)


def assert_made_from(plant: Plant, data: bytes) -> None:
    (record,) = [Sidecar.model_validate_json(p.read_bytes()) for p in plant.dirs["outbox"].glob("*.json")]
    assert record.input.sha256 == sha(data) and Path(record.input.path).read_bytes() == data
    expected = ClassicalEngine().enhance(tifffile.imread(Path(record.input.path))).pixels
    np.testing.assert_array_equal(tifffile.imread(record.output.path), expected)


@pytest.mark.parametrize(
    ("presize", "pause_s"),
    [(True, 0.8), (False, 0.8), (True, 4.0)],
    ids=["pre-sizing", "slow-past-stability", "pausing-past-grace"],
)
def test_a_writer_still_at_work_is_waited_for(tmp_path: Path, presize: bool, pause_s: float) -> None:
    plant = Plant(tmp_path)
    daemon = plant.daemon("a")  # stability wait 0.2 s, grace 3 s: every pause is longer than the wait
    daemon.start()
    data = frame_bytes(5, SHAPE)
    try:
        daemon.wait_ready()
        write_in_chunks(plant.dirs["inbox"] / "shot.tif", data, chunks=3, pause_s=pause_s, presize=presize)
        plant.wait_for(lambda: plant.records() == 1, 60)
        assert daemon.stop() == 0
    finally:
        plant.stop_all()
    assert_made_from(plant, data)
    result = ledger(plant.dirs, [daemon.work], [data])
    result.save(f"writer_presize{presize}_pause{pause_s}")
    result.assert_exact()


def test_a_frame_that_changes_after_its_read_is_not_committed(tmp_path: Path) -> None:
    folders = Folders().resolved(tmp_path)
    for _, path in folders:
        path.mkdir()
    (folders.inbox / "f.tif").write_bytes(frame_bytes(1, (40, 48)))
    item = claim(folders.inbox / "f.tif", folders.work, time.time(), time.monotonic())
    assert item is not None
    done = enhance_frame(load_frame(item, ReadLimits()), ClassicalEngine())
    with item.path.open("r+b") as fh:  # the writer goes on through its open descriptor
        fh.seek(-64, os.SEEK_END)
        fh.write(b"\x07" * 64)
    with pytest.raises(FrameChanged):
        commit_frame(done, Finisher.for_folders(folders, preview=False))
    assert list(folders.outbox.iterdir()) == [] and list(folders.archive.iterdir()) == []
    assert [p.name for p in folders.work.iterdir()] == ["f.tif"]  # kept, to be read again
    item.claimed_signature = None  # once settled, as the daemon's settling wait records it anew
    commit_frame(
        enhance_frame(load_frame(item, ReadLimits()), ClassicalEngine()), Finisher.for_folders(folders, preview=False)
    )
    record = Sidecar.model_validate_json((folders.outbox / "f.tif.json").read_bytes())
    assert record.input.sha256 == sha((folders.archive / "f.tif").read_bytes())


def test_a_writer_the_daemon_cannot_see_is_caught_by_the_commit_and_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer on another host (no lease can tell) rewrites the frame while it is enhanced."""
    from drdaemon.service.daemon import Daemon

    settings = daemon_settings(tmp_path)
    settings.folders.inbox.mkdir(parents=True)
    first, final = frame_bytes(7, (40, 48)), frame_bytes(8, (40, 48))
    engine = ClassicalEngine()
    enhance = engine.enhance
    calls: list[int] = []

    def enhance_while_rewritten(pixels: np.ndarray, window: Window | None = None) -> Enhanced:
        claimed = settings.folders.work / "late.tif"
        if claimed.exists():  # not the warm-up
            if not calls:
                claimed.write_bytes(final)  # the same inode and size, new content
            calls.append(1)
        return enhance(pixels, window)

    monkeypatch.setattr(engine, "enhance", enhance_while_rewritten)
    (settings.folders.inbox / "late.tif").write_bytes(first)
    daemon = Daemon(settings, engines=[engine])
    status = run_until(daemon, lambda: (settings.folders.outbox / "late.tif.json").exists())
    assert status == 0 and len(calls) == 2  # enhanced twice: the first result was not committed
    record = Sidecar.model_validate_json((settings.folders.outbox / "late.tif.json").read_bytes())
    assert record.input.sha256 == sha(final) and (settings.folders.archive / "late.tif").read_bytes() == final
    assert list(settings.folders.work.iterdir()) == []  # nothing left, the lock file neither


def test_a_frame_that_never_settles_fails_as_changed_after_a_bounded_number_of_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from drdaemon.service.daemon import MAX_CHANGES, Daemon

    settings = daemon_settings(tmp_path)
    settings.folders.inbox.mkdir(parents=True)
    engine = ClassicalEngine()
    enhance = engine.enhance
    calls: list[int] = []

    def enhance_while_rewritten(pixels: np.ndarray, window: Window | None = None) -> Enhanced:
        claimed = settings.folders.work / "restless.tif"
        if claimed.exists():  # a writer that never stops: new content during every enhancement
            calls.append(1)
            claimed.write_bytes(frame_bytes(100 + len(calls), (40, 48)))
        return enhance(pixels, window)

    monkeypatch.setattr(engine, "enhance", enhance_while_rewritten)
    (settings.folders.inbox / "restless.tif").write_bytes(frame_bytes(100, (40, 48)))
    daemon = Daemon(settings, engines=[engine])
    reason_file = settings.folders.failed / "restless.tif.reason.json"
    assert run_until(daemon, reason_file.exists, timeout=60) == 0
    assert json.loads(reason_file.read_text())["reason"] == "changed"
    assert len(calls) == MAX_CHANGES + 1 and list(settings.folders.outbox.iterdir()) == []
    assert (
        daemon.metrics.registry.get_sample_value("drdaemon_errors_total", {"stage": "read", "reason": "changed"}) == 1
    )
