"""Reader and writer counts of their own (``[service]``) and the window measured by the readers."""

import os
from pathlib import Path

import numpy as np
import pytest

from drdaemon.config import ConfigError, load_settings
from drdaemon.engines.classical import ClassicalEngine
from drdaemon.folders.claim import WorkItem
from drdaemon.io.limits import ReadLimits
from drdaemon.io.sidecar import Sidecar
from drdaemon.kernels.window import robust_window
from drdaemon.service.frame import load_frame
from drdaemon.service.threads import MAX_AUTO_THREADS, auto_threads, stage_threads
from tests.testkit import ScriptedEngine, daemon_settings, frame_bytes, run_until


def test_default_thread_counts_follow_the_cores_and_never_drop_below_the_engines() -> None:
    assert auto_threads(engines=1, cores=2) == 1
    assert auto_threads(engines=2, cores=16) == MAX_AUTO_THREADS  # two engines no longer cap the writers
    assert auto_threads(engines=8, cores=4) == 8
    assert stage_threads(2, readers=0, writers=0, cores=8) == (4, 4)
    assert stage_threads(2, readers=3, writers=5, cores=8) == (3, 5)  # configured counts win


def test_service_keys_come_from_the_file_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "drdaemon.toml"
    config.write_text("[service]\nreaders = 3\n")
    monkeypatch.setenv("DRDAEMON_SERVICE__WRITERS", "5")
    settings = load_settings(config)
    assert (settings.service.readers, settings.service.writers) == (3, 5)
    config.write_text("[service]\nreaders = -1\n")
    with pytest.raises(ConfigError, match=r"service\.readers"):
        load_settings(config)


def test_the_reader_measures_the_engines_window_and_the_engine_uses_it(tmp_path: Path) -> None:
    path = tmp_path / "f.tif"
    path.write_bytes(frame_bytes(3))
    loaded = load_frame(WorkItem(path=path, original=path), ReadLimits(10**8, 10**9), (1.0, 99.0))
    assert loaded.window == robust_window(loaded.frame.pixels, 1.0, 99.0)
    engine = ClassicalEngine(method="stretch", low_percentile=1.0, high_percentile=99.0)
    given, measured = engine.enhance(loaded.frame.pixels, loaded.window), engine.enhance(loaded.frame.pixels)
    assert given.parameters["window"] == measured.parameters["window"]
    assert np.array_equal(given.pixels, measured.pixels)


def test_the_daemon_runs_the_configured_readers_and_writers(tmp_path: Path) -> None:
    from drdaemon.service.daemon import Daemon

    settings = daemon_settings(tmp_path, folders={"create": True})
    settings.service.readers, settings.service.writers = 3, 2
    settings.folders.inbox.mkdir(parents=True)
    for index in range(6):
        (settings.folders.inbox / f"f{index}.tif").write_bytes(frame_bytes(index))
        os.utime(settings.folders.inbox / f"f{index}.tif", (index, index))
    daemon = Daemon(settings, engines=[ScriptedEngine(lambda call: None)])

    def all_done() -> bool:
        return len(list(settings.folders.outbox.glob("*.json"))) == 6

    assert run_until(daemon, all_done) == 0
    names = {t.name for t in daemon._threads}
    assert {n for n in names if n.startswith("reader-")} == {"reader-0", "reader-1", "reader-2"}
    assert {n for n in names if n.startswith("writer-")} == {"writer-0", "writer-1"}
    records = [Sidecar.model_validate_json(p.read_bytes()) for p in settings.folders.outbox.glob("*.json")]
    assert len(records) == 6 and all("window" in r.timings for r in records)
