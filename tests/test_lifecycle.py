"""The folder lifecycle without a daemon process: watching, claiming, committing, recovering."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest
import tifffile

from drdaemon.cli import main
from drdaemon.config import Folders, WatchConfig
from drdaemon.engines import ClassicalEngine
from drdaemon.errors import FrameError, Reason, Stage
from drdaemon.folders.claim import WorkFolderBusy, WorkItem, WorkLock, claim, pending_work
from drdaemon.folders.commit import Finisher, Plan, fail_frame, plan_path
from drdaemon.folders.watcher import InboxWatcher
from drdaemon.io.durable import TEMP_SUFFIX, Owner, current_owner, temp_path_for
from drdaemon.io.formats import encode_tiff_u16
from drdaemon.io.limits import ReadLimits
from drdaemon.io.sidecar import Sidecar
from drdaemon.service.daemon import Daemon
from drdaemon.service.frame import EnhancedFrame, commit_frame, enhance_frame, load_frame, sidecar_draft
from tests.testkit import ScriptedEngine, daemon_settings, frame_bytes, run_until, sha


def path_of(name: str | None) -> Path:
    """A path a plan names (plans name their files as optional strings)."""
    assert name is not None
    return Path(name)


# -- claiming -----------------------------------------------------------------------------------
def test_claim_moves_the_file_and_never_replaces_a_work_item(folders: Folders) -> None:
    for content in (b"first", b"second"):
        (folders.inbox / "a.tif").write_bytes(content)
        item = claim(folders.inbox / "a.tif", folders.work, time.time(), time.monotonic())
        assert item is not None and not (folders.inbox / "a.tif").exists()
    assert (folders.work / "a.tif").read_bytes() == b"first"
    assert (folders.work / "a~1.tif").read_bytes() == b"second"
    assert claim(folders.inbox / "gone.tif", folders.work, 0.0, 0.0) is None
    assert [p.name for p in pending_work(folders.work)] == ["a.tif", "a~1.tif"]


def test_only_one_daemon_owns_a_work_folder(folders: Folders) -> None:
    import socket

    with WorkLock(folders.work), pytest.raises(WorkFolderBusy) as busy:
        WorkLock(folders.work).acquire()
    # Exit 75's message names who holds the folder, so that it can be found and stopped.
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(busy.value)
    with WorkLock(folders.work):  # released with the first holder
        pass
    assert not (folders.work / ".drdaemon.lock").exists()  # a clean release leaves no lock file


def test_a_lock_file_removed_while_a_second_daemon_waits_for_it_keeps_the_folder_exclusive(
    folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first daemon exits (removing its lock file) between the second's open and its flock."""
    first = WorkLock(folders.work)
    first.acquire()
    real_flock = fcntl.flock  # the module drdaemon.folders.claim locks with
    calls: list[int] = []

    def first_exits_meanwhile(fd: int, operation: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            first.release()  # unlinks the file the second daemon has just opened
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", first_exits_meanwhile)
    second = WorkLock(folders.work)
    second.acquire()
    monkeypatch.setattr(fcntl, "flock", real_flock)
    assert len(calls) == 2  # it locked the removed file, saw it, and locked the new one
    assert (folders.work / ".drdaemon.lock").read_text().split()[0] == str(os.getpid())
    with pytest.raises(WorkFolderBusy):  # a third daemon still finds the folder taken
        WorkLock(folders.work).acquire()
    second.release()
    assert not (folders.work / ".drdaemon.lock").exists()


# -- committing and recovering ------------------------------------------------------------------
ENGINE = ClassicalEngine()


def process(item: WorkItem, finisher: Finisher) -> None:
    commit_frame(enhance_frame(load_frame(item, ReadLimits()), ENGINE), finisher)


def assert_exactly_once(folders: Folders, inputs: dict[str, bytes]) -> None:
    """Every input has one output and one sidecar, its raw bytes in the archive, nothing else."""
    sidecars = sorted(folders.outbox.glob("*.tif.json"))
    outputs = sorted(folders.outbox.glob("*.tif"))
    assert len(sidecars) == len(outputs) == len(inputs)
    seen: dict[str, Sidecar] = {}
    for path in sidecars:
        record = Sidecar.model_validate_json(path.read_bytes())
        output = Path(record.output.path)
        assert output == path.with_name(path.name[: -len(".json")])
        assert sha(output.read_bytes()) == record.output.sha256
        name = Path(record.input.original_path).name
        assert name not in seen, f"{name} processed twice"
        seen[name] = record
        assert Path(record.input.path).read_bytes() == inputs[name]
        assert record.input.sha256 == sha(inputs[name])
    assert set(seen) == set(inputs)
    assert sorted(p.read_bytes() for p in folders.archive.iterdir()) == sorted(inputs.values())
    leftovers = [
        p.name
        for _, folder in folders
        for p in folder.iterdir()
        if p.name != ".drdaemon.lock" and folder not in (folders.outbox, folders.archive)
    ]
    assert leftovers == []
    assert not list(folders.outbox.glob(f".*{TEMP_SUFFIX}"))


def dead_owner() -> Owner:
    """The owner token of a process that no longer runs on this host (a daemon killed with -9)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return Owner(current_owner().host, child.pid, 1)


STEPS = ["claimed", "planned", "stranger-committed", "temp-output", "output", "archive-linked", "sidecar", "archived"]


def crash_at(step: str, folders: Folders, finisher: Finisher, item: WorkItem) -> None:
    """Carry the commit protocol of ``item`` up to ``step`` and stop as kill -9 would."""
    done = enhance_frame(load_frame(item, ReadLimits()), ENGINE)
    if step == "claimed":
        return  # claimed, nothing written
    plan = finisher.plan_success(item.path, item.original.name)
    if step == "planned":
        return
    data = encode_tiff_u16(done.result.pixels, {}, "zstd")
    if step == "stranger-committed":  # another daemon committed its own frame under the planned name
        path_of(plan.output).write_bytes(b"another daemon's output")
        stranger = sidecar_for(done, plan, b"another daemon's output")
        stranger.input.sha256 = sha(b"another frame")
        path_of(plan.sidecar).write_bytes(stranger.to_bytes())
        return
    if step == "temp-output":  # half an output under its temporary name
        temp_path_for(path_of(plan.output), owner=finisher.owner).write_bytes(data[: len(data) // 2])
        return
    finisher.write_output(plan, data)
    if step == "output":
        return
    finisher.reserve_archive(item.path, plan, kind="archive")
    if step == "archive-linked":
        return
    finisher.write_sidecar(plan, sidecar_for(done, plan, data).to_bytes())
    if step == "sidecar":
        return
    item.path.unlink()  # archived (the link exists), plan not yet removed
    assert plan_path(item.path).exists()


def sidecar_for(done: EnhancedFrame, plan: Plan, data: bytes) -> Sidecar:
    assert plan.archive is not None and plan.output is not None
    return sidecar_draft(done).complete(
        input_path=plan.archive,
        output_path=plan.output,
        data=data,
        shape=[48, 64],
        dtype="uint16",
        compression="zstd",
        preview=None,
        write_s=0.0,
        claim=plan.claim,
    )


@pytest.mark.parametrize("step", STEPS)
def test_restart_after_a_crash_at_any_step_gives_exactly_one_result(folders: Folders, step: str) -> None:
    inputs = {"a.tif": frame_bytes(1), "b.tif": frame_bytes(2)}
    for name, data in inputs.items():
        (folders.inbox / name).write_bytes(data)
    crashed = claim(folders.inbox / "a.tif", folders.work, time.time(), time.monotonic())
    assert crashed is not None
    crash_at(step, folders, Finisher.for_folders(folders, preview=False, owner=dead_owner()), crashed)

    restarted = Finisher.for_folders(folders, preview=False)
    recovery = restarted.recover_all(folders.work)
    committed = step in ("sidecar", "archived")
    assert [p.name for p in recovery.redo] == ([] if committed else ["a.tif"])
    # Both were committed; "archived" lacked only the plan's removal, and is reported (counted) too.
    assert len(recovery.finished) == committed
    for path in recovery.redo:
        process(WorkItem(path=path, original=path), restarted)
    second = claim(folders.inbox / "b.tif", folders.work, time.time(), time.monotonic())
    assert second is not None
    process(second, restarted)
    if step == "stranger-committed":  # the stranger's files stay untouched, the frame took the next name
        assert (folders.outbox / "a.tif").read_bytes() == b"another daemon's output"
        assert (folders.outbox / "a~1.tif.json").exists()
        (folders.outbox / "a.tif.json").unlink()
        (folders.outbox / "a.tif").unlink()
    assert_exactly_once(folders, inputs)


class RawOutput:
    """A second output format as a test stand-in: headerless little-endian uint16."""

    name = "raw"
    suffix = ".raw"
    preview_suffix = ".preview.png"
    compression = "none"
    kept_tags: tuple[str, ...] = ()

    def encode(self, pixels: np.ndarray, tags: object = None) -> bytes:
        return pixels.astype("<u2").tobytes()

    def preview(self, pixels: np.ndarray) -> bytes:
        raise AssertionError("no preview was asked for")


def test_a_second_output_format_names_encodes_and_records_the_output(folders: Folders) -> None:
    (folders.inbox / "r.tif").write_bytes(frame_bytes(13))
    item = claim(folders.inbox / "r.tif", folders.work, time.time(), time.monotonic())
    assert item is not None
    done = enhance_frame(load_frame(item, ReadLimits()), ENGINE)
    committed = commit_frame(done, Finisher.for_folders(folders, preview=False, output_format=RawOutput()))
    assert committed.output == folders.outbox / "r.raw"
    assert np.array_equal(np.frombuffer(committed.output.read_bytes(), "<u2").reshape(48, 64), done.result.pixels)
    record = Sidecar.model_validate_json((folders.outbox / "r.raw.json").read_bytes())
    assert record.output.path == str(folders.outbox / "r.raw") and record.output.compression == "none"
    assert record.output.sha256 == sha(committed.output.read_bytes())
    assert (folders.archive / "r.tif").read_bytes() == frame_bytes(13)


def test_name_collisions_get_distinct_documented_names(folders: Folders) -> None:
    (folders.outbox / "x.tif").write_bytes(b"someone else's")
    (folders.archive / "x.png").write_bytes(b"an earlier frame")
    finisher = Finisher.for_folders(folders, preview=True)
    first = finisher.plan_success(folders.work / "x.png", "x.png", write_plan=False)
    second = finisher.plan_success(folders.work / "x.tiff", "x.tiff", write_plan=False)
    assert path_of(first.output).name == "x~1.tif" and path_of(first.sidecar).name == "x~1.tif.json"
    assert path_of(first.preview).name == "x~1.preview.png"
    assert path_of(first.archive).name == "x~1.png"
    assert path_of(second.output).name == "x~2.tif"  # reserved while the first is in flight
    assert path_of(second.archive).name == "x.tiff"
    assert (folders.outbox / "x.tif").read_bytes() == b"someone else's"


def test_failed_frame_moves_with_a_reason_file(folders: Folders) -> None:
    (folders.inbox / "bad.tif").write_bytes(b"garbage" * 10)
    item = claim(folders.inbox / "bad.tif", folders.work, time.time(), time.monotonic())
    assert item is not None
    with pytest.raises(FrameError) as error:
        load_frame(item, ReadLimits())
    destination = fail_frame(item, error.value, Finisher.for_folders(folders, preview=False))
    assert destination == folders.failed / "bad.tif"
    assert destination.read_bytes() == b"garbage" * 10
    reason = json.loads((folders.failed / "bad.tif.reason.json").read_text())
    assert reason["stage"] == Stage.READ.value and reason["reason"] == Reason.UNREADABLE.value
    assert reason["error_class"] == "FrameError" and "none of the frame formats drdaemon reads" in reason["message"]
    assert "TIFF: its II*/MM* signature" in reason["message"] and "PNG: its signature" in reason["message"]
    assert list(folders.work.iterdir()) == []


# -- watching -----------------------------------------------------------------------------------
def ready_names(watcher: InboxWatcher, now: float) -> list[str]:
    """Names ready at the (synthetic) monotonic time ``now``; makes stability tests deterministic."""
    return sorted(c.path.name for c in watcher.poll(now))


def wait_until_ready(watcher: InboxWatcher, expected: list[str], seconds: float = 10.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while (ready := sorted(c.path.name for c in watcher.poll())) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return ready


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_watcher_takes_only_stable_complete_frames(folders: Folders, polling: bool) -> None:
    config = WatchConfig(stability_wait_s=1.0, incomplete_grace_s=60, polling=polling, poll_interval_s=0.01)
    watcher = InboxWatcher(folders.inbox, config)
    watcher.start()
    try:
        data = frame_bytes(3)
        (folders.inbox / "whole.tif").write_bytes(data)
        (folders.inbox / "half.tif").write_bytes(data[: len(data) // 2])
        for ignored in ("x.tif.part", "x.tmp", ".hidden.tif", "notes.txt"):
            (folders.inbox / ignored).write_bytes(data)
        t0 = time.monotonic()
        assert ready_names(watcher, t0) == []  # first sight
        assert ready_names(watcher, t0 + 0.5) == []  # not yet stable for the wait
        assert ready_names(watcher, t0 + 1.1) == ["whole.tif"]  # the half file is not whole
        assert watcher.depth == 2
        with (folders.inbox / "half.tif").open("ab") as fh:
            fh.write(data[len(data) // 2 :])
        assert ready_names(watcher, t0 + 1.2) == ["whole.tif"]  # it changed: the wait starts again
        assert ready_names(watcher, t0 + 2.3) == ["half.tif", "whole.tif"]
        assert watcher.alive
    finally:
        watcher.stop()


def test_stable_but_never_complete_file_is_released_after_the_grace(folders: Folders) -> None:
    watcher = InboxWatcher(folders.inbox, WatchConfig(stability_wait_s=0.5, incomplete_grace_s=5.0))
    (folders.inbox / "junk.tif").write_bytes(b"not an image")
    t0 = time.monotonic()
    assert ready_names(watcher, t0) == []
    assert ready_names(watcher, t0 + 1.0) == []  # stable, but not an image: it waits
    assert ready_names(watcher, t0 + 5.1) == ["junk.tif"]  # ... until the grace is over


def test_dead_observer_is_restarted(folders: Folders) -> None:
    watcher = InboxWatcher(folders.inbox, WatchConfig(stability_wait_s=0.05, rescan_interval_s=3600))
    watcher.start()
    try:
        watcher.poll()  # the start-up scan; from now on only events can reveal a file
        observer = watcher._observer
        assert observer is not None
        observer.stop()
        observer.join()
        assert not watcher.alive
        assert watcher.ensure_observer() and watcher.alive
        (folders.inbox / "after.tif").write_bytes(frame_bytes(4))
        assert wait_until_ready(watcher, ["after.tif"]) == ["after.tif"]
    finally:
        watcher.stop()


# -- drdaemon enhance ---------------------------------------------------------------------------
def test_enhance_command_writes_outputs_and_never_touches_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs: list[Path] = []
    for index in range(3):
        path = tmp_path / f"f{index}.tif"
        path.write_bytes(frame_bytes(index))
        inputs.append(path)
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"oops")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in [*inputs, bad]}
    out = tmp_path / "out"
    assert main(["enhance", *map(str, inputs), "--out", str(out)]) == 0
    assert main(["enhance", str(inputs[0]), str(bad), "--out", str(out)]) == 1
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "f0.tif",
        "f0.tif.json",
        "f0~1.tif",
        "f0~1.tif.json",
        "f1.tif",
        "f1.tif.json",
        "f2.tif",
        "f2.tif.json",
    ]
    record = Sidecar.model_validate_json((out / "f1.tif.json").read_bytes())
    assert record.input.path == str(inputs[1]) and record.input.sha256 == sha(inputs[1].read_bytes())
    with tifffile.TiffFile(out / "f1.tif") as tif:
        assert tif.pages[0].shape == (48, 64) and tif.pages[0].dtype == np.uint16
    assert "bad.tif" in capsys.readouterr().err


def test_enhance_command_writes_absolute_paths_for_relative_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rel.tif").write_bytes(frame_bytes(5))
    monkeypatch.chdir(tmp_path)
    assert main(["enhance", "in/rel.tif", "--out", "out"]) == 0
    record = Sidecar.model_validate_json((tmp_path / "out" / "rel.tif.json").read_bytes())
    assert record.input.path == str(tmp_path / "in" / "rel.tif")
    assert record.input.original_path == str(tmp_path / "in" / "rel.tif")
    assert record.output.path == str(tmp_path / "out" / "rel.tif")


# -- the daemon in-process: engines that misbehave ----------------------------------------------
def test_a_frame_that_waited_while_the_daemon_was_down_reports_its_wait_from_its_arrival(tmp_path: Path) -> None:
    settings = daemon_settings(tmp_path, folders={"create": True})
    settings.folders.inbox.mkdir(parents=True)
    (settings.folders.inbox / "early.tif").write_bytes(frame_bytes(4))
    arrived = time.time()
    time.sleep(1.5)  # the daemon is down
    daemon = Daemon(settings, engines=[ScriptedEngine(lambda call: None)])
    sidecar = settings.folders.outbox / "early.tif.json"
    assert run_until(daemon, sidecar.exists) == 0
    record = Sidecar.model_validate_json(sidecar.read_bytes())
    started = datetime.fromisoformat(record.started_utc.replace("Z", "+00:00")).timestamp()
    # From its arrival to its claim (just before its read), not from the daemon's start.
    assert record.timings["wait"] >= 1.5
    assert record.timings["wait"] == pytest.approx(started - arrived, abs=0.5)
    latency = daemon.metrics.registry.get_sample_value("drdaemon_frame_latency_seconds_sum")
    assert latency is not None and latency >= 1.5


def test_engine_errors_fail_only_their_frame(tmp_path: Path) -> None:
    def behaviour(call: int) -> None:
        if call == 2:
            raise FrameError(Stage.ENHANCE, Reason.DEVICE_ERROR, "CUDA out of memory")
        if call == 3:
            raise RuntimeError("kernel exploded")

    settings = daemon_settings(tmp_path, folders={"create": True})
    settings.folders.inbox.mkdir(parents=True)
    for index in range(4):
        (settings.folders.inbox / f"f{index}.tif").write_bytes(frame_bytes(index))
        os.utime(settings.folders.inbox / f"f{index}.tif", (index, index))
    daemon = Daemon(settings, engines=[ScriptedEngine(behaviour)])
    status = run_until(
        daemon,
        lambda: (
            len(list(settings.folders.archive.glob("*.tif"))) == 2
            and len(list(settings.folders.failed.glob("*.reason.json"))) == 2
        ),
    )
    assert status == 0
    reasons = sorted(json.loads(p.read_text())["reason"] for p in settings.folders.failed.glob("*.reason.json"))
    assert reasons == ["device_error", "engine_error"]
    records = [Sidecar.model_validate_json(p.read_bytes()) for p in settings.folders.outbox.glob("*.json")]
    assert {r.software.device for r in records} == {"cuda:7"}
    assert {r.engine.weights_sha256 for r in records} == {"ab" * 32}
    assert all(r.timings["upload"] == 0.001 for r in records)


def test_lost_device_exits_70_and_leaves_the_frame_for_the_next_start(tmp_path: Path) -> None:
    from drdaemon.errors import DeviceLost
    from drdaemon.exits import EXIT_DEVICE_LOST

    def behaviour(call: int) -> None:
        raise DeviceLost("cuda:7 fell off the bus")

    settings = daemon_settings(tmp_path, folders={"create": True})
    settings.folders.inbox.mkdir(parents=True)
    data = frame_bytes(9)
    (settings.folders.inbox / "victim.tif").write_bytes(data)
    daemon = Daemon(settings, engines=[ScriptedEngine(behaviour)])
    assert daemon.run(install_signal_handlers=False) == EXIT_DEVICE_LOST
    assert (settings.folders.work / "victim.tif").read_bytes() == data  # redone at the next start
    assert list(settings.folders.failed.iterdir()) == [] and list(settings.folders.outbox.iterdir()) == []


def test_an_internal_error_exits_70_and_says_it_was_not_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drdaemon.exits import EXIT_INTERNAL_ERROR
    from drdaemon.service import daemon as daemon_module

    def broken_timings(*args: object) -> dict[str, float]:
        raise RuntimeError("a bug after the commit")

    monkeypatch.setattr(daemon_module, "stage_timings", broken_timings)
    settings = daemon_settings(tmp_path, folders={"create": True})
    settings.folders.inbox.mkdir(parents=True)
    (settings.folders.inbox / "one.tif").write_bytes(frame_bytes(3))
    daemon = daemon_module.Daemon(settings, engines=[ScriptedEngine(lambda call: None)])
    assert run_until(daemon, lambda: False, timeout=10.0) == EXIT_INTERNAL_ERROR
    sample = daemon.metrics.registry.get_sample_value
    assert sample("drdaemon_fatal_errors_total", {"cause": "internal_error"}) == 1
    assert sample("drdaemon_fatal_errors_total", {"cause": "device_lost"}) == 0
    assert (settings.folders.outbox / "one.tif.json").exists()  # committed before the bug struck


def test_a_name_taken_after_it_was_chosen_is_chosen_again_and_the_strangers_file_spared(
    folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folders.inbox / "w.tif").write_bytes(frame_bytes(11))
    item = claim(folders.inbox / "w.tif", folders.work, time.time(), time.monotonic())
    assert item is not None
    finisher = Finisher.for_folders(folders, preview=False)
    plan_success = finisher.plan_success
    taken: list[str] = []

    def plan_then_someone_writes(*args: Any, **kwargs: Any) -> Plan:
        plan = plan_success(*args, **kwargs)
        if not taken:  # another host's daemon links its output under the name just chosen
            path_of(plan.output).write_bytes(b"a stranger's file, created after the name was chosen")
            taken.append(str(plan.output))
        return plan

    monkeypatch.setattr(finisher, "plan_success", plan_then_someone_writes)
    process(item, finisher)
    assert (folders.outbox / "w.tif").read_bytes().startswith(b"a stranger's file")
    assert not (folders.outbox / "w.tif.json").exists()
    record = Sidecar.model_validate_json((folders.outbox / "w~1.tif.json").read_bytes())
    assert record.output.path == str(folders.outbox / "w~1.tif")
    assert Path(record.input.path).read_bytes() == (folders.archive / "w.tif").read_bytes()
    assert list(folders.work.iterdir()) == [] and not list(folders.outbox.glob(f".*{TEMP_SUFFIX}"))


def test_a_full_outbox_fails_the_write_and_leaves_nothing_under_a_final_name(
    folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folders.inbox / "w.tif").write_bytes(frame_bytes(11))
    item = claim(folders.inbox / "w.tif", folders.work, time.time(), time.monotonic())
    assert item is not None
    finisher = Finisher.for_folders(folders, preview=False)

    def always_taken(*args: object, **kwargs: object) -> NoReturn:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(finisher, "write_sidecar", always_taken)
    with pytest.raises(FrameError) as error:
        process(item, finisher)
    assert error.value.stage is Stage.WRITE and error.value.reason is Reason.WRITE_ERROR
    assert list(folders.outbox.iterdir()) == [] and list(folders.archive.iterdir()) == []
    assert [p.name for p in folders.work.iterdir()] == ["w.tif"]


def test_preview_is_written_before_the_sidecar_and_named_in_it(folders: Folders) -> None:
    import cv2

    (folders.inbox / "p.tif").write_bytes(frame_bytes(12, (300, 2400)))
    item = claim(folders.inbox / "p.tif", folders.work, time.time(), time.monotonic())
    assert item is not None
    process(item, Finisher.for_folders(folders, preview=True))
    record = Sidecar.model_validate_json((folders.outbox / "p.tif.json").read_bytes())
    assert record.output.preview == str(folders.outbox / "p.preview.png")
    preview = cv2.imread(record.output.preview, cv2.IMREAD_UNCHANGED)
    assert preview is not None
    assert preview.dtype == np.uint8 and preview.shape == (128, 1024)


def test_a_file_no_pattern_takes_is_named_once_in_the_log_and_counted(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    settings = daemon_settings(tmp_path, folders={"create": True})
    settings.folders.inbox.mkdir(parents=True)
    inbox = settings.folders.inbox
    for name in ("part.jpg", "part.jpeg", ".hidden.jpg", "x.part"):
        (inbox / name).write_bytes(b"\xff\xd8\xff\xe0 a JPEG the station wrote")
    (inbox / "good.tif").write_bytes(frame_bytes(2))
    daemon = Daemon(settings, engines=[ScriptedEngine(lambda call: None)])
    gauge = daemon.metrics.registry.get_sample_value
    seen: list[float | None] = []

    def done() -> bool:  # the good frame is finished, the gauge counts, and more rescans (0.2 s apart) have run
        if not (settings.folders.outbox / "good.tif.json").exists():
            return False
        seen.append(gauge("drdaemon_inbox_unmatched_files"))
        return seen[-1] == 2 and len(seen) > 40

    with capture_logs() as logs:
        assert run_until(daemon, done) == 0
    unmatched = [entry for entry in logs if entry["event"] == "inbox_file_unmatched"]
    assert sorted(entry["file"] for entry in unmatched) == ["part.jpeg", "part.jpg"]  # each once, rescans or not
    assert all("*.tif" in entry["patterns"] and "*.dcm" in entry["patterns"] for entry in unmatched)
    assert "'*.jpg'" in next(e["note"] for e in unmatched if e["file"] == "part.jpg")
    assert seen[-1] == 2
    assert sorted(p.name for p in inbox.iterdir()) == [".hidden.jpg", "part.jpeg", "part.jpg", "x.part"]  # untouched
