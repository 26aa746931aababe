"""Fault 9: the smaller ones: a replaced inbox, the collision map, SIGTERM during start-up, frames
finished by recovery, decompression bombs, and directory fsyncs after every commit step."""

from __future__ import annotations

import os
import random
import shutil
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drdaemon.config import Folders, WatchConfig
from drdaemon.engines import ClassicalEngine
from drdaemon.errors import FrameError, Reason
from drdaemon.folders import commit as commit_module
from drdaemon.folders.claim import claim
from drdaemon.folders.commit import Finisher
from drdaemon.folders.watcher import InboxWatcher
from drdaemon.io import durable
from drdaemon.io.limits import ReadLimits
from drdaemon.io.readers import read_frame
from drdaemon.service.frame import commit_frame, enhance_frame, load_frame, sidecar_draft
from tests.reliability.plant import Plant, dead_owner, ledger
from tests.testkit import daemon_settings, frame_bytes, tiff_bytes

pytestmark = pytest.mark.reliability


def test_a_deleted_and_recreated_inbox_is_noticed_and_watched_again(folders: Folders) -> None:
    watcher = InboxWatcher(folders.inbox, WatchConfig(stability_wait_s=0.05, rescan_interval_s=3600))
    watcher.start()
    try:
        watcher.poll()  # the start-up scan; from now on only events can reveal a file
        assert watcher.alive
        shutil.rmtree(folders.inbox)
        folders.inbox.mkdir()
        deadline = time.monotonic() + 5
        while watcher.alive:  # drdaemon_watcher_up follows this: 0 until re-armed
            assert time.monotonic() < deadline, "the lost watch went unnoticed"
            time.sleep(0.02)
        assert watcher.ensure_observer() and watcher.alive
        (folders.inbox / "after.tif").write_bytes(frame_bytes(1))
        deadline = time.monotonic() + 10
        while not [c for c in watcher.poll() if c.path.name == "after.tif"]:
            assert time.monotonic() < deadline, "the new inbox is not watched"
            time.sleep(0.02)
    finally:
        watcher.stop()


def test_the_collision_index_map_stays_bounded_over_many_distinct_names(folders: Folders) -> None:
    finisher = Finisher.for_folders(folders, preview=False)
    for index in range(10_000):
        plan = finisher.plan_success(folders.work / f"n{index}.tif", f"n{index}.tif", write_plan=False)
        finisher.release(plan)
    assert len(finisher._next_index) <= commit_module._INDEX_MEMORY
    assert finisher._reserved == set()


def test_sigterm_at_any_moment_of_start_up_exits_0(tmp_path: Path) -> None:
    rng = random.Random(9)
    for attempt in range(4):
        plant = Plant(tmp_path / f"run{attempt}")
        daemon = plant.daemon("a")
        daemon.start()
        # From the interpreter's first import of drdaemon (0.3 s) through loading and warm-up.
        time.sleep(rng.uniform(0.3, 2.5))
        assert daemon.stop() == 0, daemon.log.read_text()[-3000:]


def test_frames_finished_by_recovery_are_logged_and_counted(tmp_path: Path) -> None:
    from drdaemon.service.daemon import Daemon

    settings = daemon_settings(tmp_path)
    for _, path in settings.folders:
        path.mkdir(parents=True)
    data = frame_bytes(3)
    (settings.folders.inbox / "r.tif").write_bytes(data)
    item = claim(settings.folders.inbox / "r.tif", settings.folders.work, time.time(), time.monotonic())
    assert item is not None
    crashed = Finisher.for_folders(settings.folders, preview=False, owner=dead_owner())
    done = enhance_frame(load_frame(item, ReadLimits()), ClassicalEngine())
    plan = crashed.plan_success(item.path, "r.tif")
    assert plan.output is not None and plan.archive is not None
    encoded = crashed.output_format.encode(done.result.pixels, {})
    crashed.write_output(plan, encoded)
    crashed.reserve_archive(item.path, plan, kind="archive")
    sidecar = sidecar_draft(done).complete(
        input_path=plan.archive,
        output_path=plan.output,
        data=encoded,
        shape=[40, 48],
        dtype="uint16",
        compression="zstd",
        preview=None,
        write_s=0.0,
        claim=plan.claim,
    )
    crashed.write_sidecar(plan, sidecar.to_bytes())  # killed here: committed, not cleaned up
    daemon = Daemon(settings, engines=[ClassicalEngine()])
    daemon.request_stop()  # start, recover, stop
    assert daemon.run(install_signal_handlers=False) == 0
    assert daemon.metrics.registry.get_sample_value("drdaemon_frames_total", {"result": "ok"}) == 1
    result = ledger(
        {"outbox": settings.folders.outbox, "archive": settings.folders.archive, "failed": settings.folders.failed},
        [settings.folders.work],
        [data],
    )
    result.assert_exact()


def bomb(side: int) -> bytes:
    """A deflate TIFF of a few kilobytes that decodes to side x side 16-bit pixels."""
    return tiff_bytes(np.zeros((side, side), np.uint16), compression="zlib", rowsperstrip=side)


@pytest.mark.parametrize("key", ["max_decoded_bytes", "max_bytes"])
def test_a_decompression_bomb_fails_as_too_large_without_the_allocation(tmp_path: Path, key: str) -> None:
    path = tmp_path / "bomb.tif"
    path.write_bytes(bomb(4096))  # 32 MiB of pixels
    assert path.stat().st_size < 100_000
    limits = ReadLimits(max_decoded_bytes=16 << 20) if key == "max_decoded_bytes" else ReadLimits(max_bytes=16 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(FrameError) as error:
            read_frame(path, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.value.reason is Reason.TOO_LARGE and f"input.{key}" in str(error.value)
    assert peak < 4 << 20  # far below the 32 MiB the pixels would take
    assert read_frame(path, ReadLimits()).pixels.shape == (4096, 4096)  # within the defaults it decodes


def test_every_commit_step_is_followed_by_an_fsync_of_its_folder(
    folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a power cut, a step that completed must not be undone by a later one surviving alone."""
    journal: list[tuple[str, Path]] = []
    for name in ("link", "rename", "replace", "unlink"):
        real = getattr(os, name)

        def recorded(*args: Any, _real: Callable[..., Any] = real, _name: str = name, **kwargs: Any) -> Any:
            result = _real(*args, **kwargs)
            target = Path(args[1] if _name in ("link", "rename", "replace") else args[0])
            journal.append((_name, target.parent))
            return result

        monkeypatch.setattr(os, name, recorded)
    real_fsync_dir = durable.fsync_directory

    def fsynced(directory: Path) -> None:
        journal.append(("fsync", Path(directory)))
        real_fsync_dir(directory)

    for module in (durable, commit_module):
        monkeypatch.setattr(module, "fsync_directory", fsynced)
    (folders.inbox / "p.tif").write_bytes(frame_bytes(2))
    item = claim(folders.inbox / "p.tif", folders.work, time.time(), time.monotonic())
    assert item is not None
    journal.clear()
    commit_frame(
        enhance_frame(load_frame(item, ReadLimits()), ClassicalEngine()), Finisher.for_folders(folders, preview=False)
    )
    steps = [(op, folder) for op, folder in journal if op != "fsync"]
    assert {folder for _, folder in steps} >= {folders.outbox, folders.archive, folders.work}
    for index, (op, folder) in enumerate(journal):
        if op == "fsync":
            continue
        later = journal[index + 1 :]
        # The next step in another folder comes only after this folder was fsynced.
        next_elsewhere = next((i for i, (o, f) in enumerate(later) if o != "fsync" and f != folder), len(later))
        assert ("fsync", folder) in later[:next_elsewhere] or (
            not later[:next_elsewhere] and ("fsync", folder) in later
        ), (op, folder, journal)
