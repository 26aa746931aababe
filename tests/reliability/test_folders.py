"""Faults 7 and 8: folders that break under the daemon: a bind-mounted work folder, a full, read-only
or vanished outbox."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from plant import Plant

from drdaemon.config import ConfigError, Settings
from drdaemon.exits import EXIT_CONFIG
from drdaemon.service import daemon as daemon_module

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
    command = f'mount --bind "{real}" "{daemon.work}" && exec "{sys.executable}" -m drdaemon run --config "{daemon.config}"'
    run = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == EXIT_CONFIG, run.stderr[-3000:]
    assert "bind mount" in run.stderr and "folders.inbox" in run.stderr
    assert os.stat(real).st_dev == os.stat(plant.dirs["inbox"]).st_dev  # the device check alone passes


def test_the_rename_probe_refuses_folders_a_rename_cannot_cross(tmp_path: Path, monkeypatch) -> None:
    settings = Settings(metrics={"enabled": False})
    settings.folders = settings.folders.resolved(tmp_path)
    real_rename = os.rename

    def cross_mount(source, target, *args, **kwargs):
        if Path(target).parent == settings.folders.archive:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(source, target, *args, **kwargs)

    monkeypatch.setattr(daemon_module.os, "rename", cross_mount)
    with pytest.raises(ConfigError, match="folders.archive"):
        daemon_module.Daemon(settings, engines=[]).prepare_folders()
    assert [p.name for p in settings.folders.work.iterdir()] == []  # the probe cleaned up after itself
