"""The weights file replaced while the daemon runs: the loaded weights stay until SIGHUP; a bad file is refused.

The same for ``engine.name = "net"`` and for a pipeline whose ``net`` step names the file."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from drdaemon.io.sidecar import Sidecar
from tests.reliability.plant import Plant
from tests.testkit import frame_bytes, write_weights

pytestmark = pytest.mark.reliability


ENGINE_TABLES = {
    "net": '[engine]\nname = "net"\nweights = "{live}"\ndevices = ["cpu"]\nprecision = "float32"\n',
    "pipeline": '[engine]\nname = "pipeline"\ndevices = ["cpu"]\n[[engine.pipeline.steps]]\nop = "normalise"\n'
    '[[engine.pipeline.steps]]\nop = "net"\nweights = "{live}"\nprecision = "float32"\n',
}


@pytest.mark.parametrize("engine", sorted(ENGINE_TABLES))
def test_replaced_weights_are_used_only_after_sighup_and_a_bad_file_is_refused(tmp_path: Path, engine: str) -> None:
    plant = Plant(tmp_path)
    live = tmp_path / "enhancer.safetensors"
    first = write_weights(live, scale=2, seed=0, provenance={"run": "reload-0"})
    second = write_weights(tmp_path / "second.safetensors", scale=2, seed=1, provenance={"run": "reload-1"})
    daemon = plant.daemon("a", ENGINE_TABLES[engine].format(live=live))
    daemon.start()
    used: list[str | None] = []

    def enhance_one(index: int) -> None:
        plant.drop(f"w{index}.tif", frame_bytes(index))
        plant.wait_for(lambda: (plant.dirs["outbox"] / f"w{index}.tif.json").exists(), 60)
        record = Sidecar.model_validate_json((plant.dirs["outbox"] / f"w{index}.tif.json").read_bytes())
        used.append(record.engine.weights_sha256)
        if engine == "pipeline":  # the step's own record names the same weights
            assert record.engine.parameters["steps"][1]["weights_sha256"] == record.engine.weights_sha256

    def events(name: str) -> int:
        return sum(e.get("event") == name for e in daemon.events())

    try:
        daemon.wait_ready(120)
        enhance_one(0)
        os.replace(tmp_path / "second.safetensors", live)  # a retrained file lands while it runs
        enhance_one(1)
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        plant.wait_for(lambda: events("engines_reloaded") == 1, 120)
        enhance_one(2)
        live.write_bytes(b"half a file")  # a broken upload, then a reload: refused, the last good stays
        daemon.process.send_signal(signal.SIGHUP)
        plant.wait_for(lambda: events("reload_refused") == 1, 120)
        enhance_one(3)
        assert daemon.stop() == 0
    finally:
        plant.stop_all()
    assert used == [first, first, second, second]
