"""The daemon with ``engine.name = "net"``: a real ``drdaemon run`` process on temporary folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from drdaemon.io.durable import file_sha256
from drdaemon.io.weights import load_weights
from tests.testkit import net_engine, run_daemon_on, shaped_frames, write_config, write_weights


@pytest.mark.slow
def test_daemon_runs_the_learned_engine_and_records_the_weights_hash(tmp_path: Path) -> None:
    weights = tmp_path / "enhancer.safetensors"
    digest = write_weights(weights, scale=2, provenance={"run": "daemon-test"})
    shapes = [(61, 83), (40, 37)]
    config = write_config(tmp_path / "daemon.toml", engine=net_engine(weights.name))
    outbox, output = run_daemon_on(tmp_path, config, shaped_frames(shapes))
    sidecars = sorted(outbox.glob("*.json"))
    assert len(sidecars) == len(shapes), output
    for i, shape in enumerate(shapes):
        sidecar = json.loads((outbox / f"f{i}.tif.json").read_text())
        assert sidecar["engine"]["name"] == "net"
        assert sidecar["engine"]["weights_sha256"] == digest == file_sha256(weights)
        assert sidecar["engine"]["parameters"]["illumination_scale"] == 2
        provenance = sidecar["engine"]["parameters"]["weights_provenance_sha256"]
        assert provenance == load_weights(weights).provenance_sha256 and len(provenance) == 64
        assert sidecar["software"]["device"] == "cpu"
        assert {"upload", "compute", "download"} <= set(sidecar["timings"])
        enhanced = tifffile.imread(outbox / f"f{i}.tif")
        assert enhanced.shape == shape and enhanced.dtype == np.uint16
    assert not list((tmp_path / "failed").glob("*"))


@pytest.mark.slow
def test_net_without_a_weights_key_runs_the_shipped_weights_and_names_them(tmp_path: Path) -> None:
    from drdaemon.defaults import SHIPPED_WEIGHTS

    card = json.loads(SHIPPED_WEIGHTS.with_name("enhancer.model_card.json").read_text())
    config = write_config(tmp_path / "daemon.toml", engine=net_engine(None))
    outbox, output = run_daemon_on(tmp_path, config, shaped_frames([(64, 96)]))
    sidecar = json.loads((outbox / "f0.tif.json").read_text())
    assert sidecar["engine"]["name"] == "net", output
    assert sidecar["engine"]["weights_sha256"] == file_sha256(SHIPPED_WEIGHTS) == card["weights"]["sha256"]
    assert sidecar["engine"]["parameters"]["weights_name"] == card["name"]
    enhanced = tifffile.imread(outbox / "f0.tif")
    assert enhanced.shape == (64, 96) and enhanced.dtype == np.uint16 and enhanced.std() > 0
