"""Faults 7 and 8: folders that break under the daemon: a bind-mounted work folder, a full, read-only
or vanished outbox."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from drdaemon.config import ConfigError
from drdaemon.exits import EXIT_CONFIG
from drdaemon.io.durable import Owner
from drdaemon.service import daemon as daemon_module
from tests.reliability.plant import Plant
from tests.testkit import daemon_settings, in_process_daemon, wait_until

pytestmark = pytest.mark.reliability


def can_bind_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not can_bind_mount(), reason="no user and mount namespaces here (unshare -rm)")
def test_a_bind_mounted_work_folder_is_refused_at_start_with_exit_78(tmp_path: Path) -> None:
    plant = Plant(tmp_path)
    daemon = plant.daemon("a")
    real = tmp_path / "real-work"
    real.mkdir()
    daemon.work.mkdir()
    # The daemon runs in its own mount namespace, where its work folder is a bind mount of real-work.
    command = (
        f'mount --bind "{real}" "{daemon.work}" && exec "{sys.executable}" -m drdaemon run --config "{daemon.config}"'
    )
    run = subprocess.run(
        ["unshare", "-rm", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == EXIT_CONFIG, run.stderr[-3000:]
    assert "bind mount" in run.stderr and "folders.inbox" in run.stderr
    assert os.stat(real).st_dev == os.stat(plant.dirs["inbox"]).st_dev  # the device check alone passes


def test_the_rename_probe_refuses_folders_a_rename_cannot_cross(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = daemon_settings(tmp_path, watch={}, folders={"create": True})
    real_rename = os.rename

    def cross_mount(source: str | os.PathLike[str], target: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
        if Path(target).parent == settings.folders.archive:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "rename", cross_mount)  # the os module the daemon's probe renames with
    with pytest.raises(ConfigError, match=r"folders\.archive"):
        daemon_module.Daemon(settings, engines=[]).prepare_folders()
    assert [p.name for p in settings.folders.work.iterdir()] == []  # the probe cleaned up after itself


# -- fault 8: output faults hold frames instead of failing them ---------------------------------
def run_in_thread(daemon: daemon_module.Daemon) -> tuple[threading.Thread, list[int]]:
    statuses: list[int] = []
    thread = threading.Thread(target=lambda: statuses.append(daemon.run(install_signal_handlers=False)), daemon=True)
    thread.start()
    return thread, statuses


@pytest.mark.parametrize(
    ("code", "label"), [(errno.ENOSPC, "disk_full"), (errno.EROFS, "read_only"), (errno.EACCES, "permission")]
)
def test_an_output_fault_holds_the_frames_says_why_and_resumes_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, label: str
) -> None:
    from drdaemon.io import durable
    from tests.reliability.plant import ledger
    from tests.testkit import frame_bytes

    daemon = in_process_daemon(tmp_path)
    folders = daemon.folders
    fault = {"on": True}
    real_write_temp = durable.write_temp

    def refusing_outbox(final: Path, data: bytes, owner: Owner | None = None, **kwargs: Any) -> Path:
        if fault["on"] and Path(final).parent == folders.outbox:
            raise OSError(code, os.strerror(code), str(final))
        return real_write_temp(final, data, owner, **kwargs)

    monkeypatch.setattr(durable, "write_temp", refusing_outbox)
    inputs = [frame_bytes(i) for i in range(10)]
    for index, data in enumerate(inputs):
        (folders.inbox / f"f{index}.tif").write_bytes(data)
    thread, statuses = run_in_thread(daemon)
    gauge = daemon.metrics.registry.get_sample_value
    wait_until(lambda: gauge("drdaemon_output_blocked", {"reason": label}) == 1)
    time.sleep(1.0)  # blocked for a while: retries, and nothing is quarantined meanwhile
    assert list(folders.failed.iterdir()) == [] and not list(folders.outbox.glob("*.json"))
    # Claiming stopped: beyond the few frames in the pipeline (at most 6), the rest wait in the inbox.
    assert len(list(folders.inbox.glob("*.tif"))) >= 4
    fault["on"] = False
    wait_until(lambda: len(list(folders.outbox.glob("*.json"))) == 10)
    assert gauge("drdaemon_output_blocked", {"reason": label}) == 0
    daemon.request_stop()
    thread.join(30)
    assert statuses == [0]
    result = ledger(
        {"outbox": folders.outbox, "archive": folders.archive, "failed": folders.failed}, [folders.work], inputs
    )
    result.save(f"output_fault_{label}")
    result.assert_exact()
    assert gauge("drdaemon_frames_total", {"result": "failed"}) == 0


def test_a_deleted_outbox_is_recreated_and_nothing_is_quarantined(tmp_path: Path) -> None:
    from tests.reliability.plant import ledger
    from tests.testkit import frame_bytes

    plant = Plant(tmp_path)
    daemon = plant.daemon("a")
    daemon.start()
    inputs = [frame_bytes(i) for i in range(6)]
    try:
        daemon.wait_ready()
        for index, data in enumerate(inputs[:3]):
            plant.drop(f"before{index}.tif", data)
        plant.wait_for(lambda: plant.records() == 3, 60)
        for folder in ("outbox", "archive"):  # someone deletes the outbox (and its results) under the daemon
            while plant.dirs[folder].exists():  # the daemon may be removing its last temporaries meanwhile
                shutil.rmtree(plant.dirs[folder], ignore_errors=True)
        for index, data in enumerate(inputs[3:]):
            plant.drop(f"after{index}.tif", data)
        plant.wait_for(lambda: plant.dirs["outbox"].exists() and plant.records() == 3, 60)
        assert daemon.stop() == 0
    finally:
        plant.stop_all()
    assert plant.names("failed") == []
    result = ledger(plant.dirs, [daemon.work], inputs[3:])
    result.save("deleted_outbox")
    result.assert_exact()
    assert any(e.get("event") == "output_blocked" and e.get("reason") == "missing" for e in daemon.events())
