"""The daemon with ``engine.name = "net"``: a real ``drdaemon run`` process on temporary folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from drdaemon.model.network import Enhancer, EnhancerSpec
from drdaemon.model.weights import file_sha256, load_weights, save_weights


def write_config(root: Path, weights: Path) -> Path:
    config = root / "daemon.toml"
    config.write_text(
        "[engine]\n"
        'name = "net"\n'
        f'weights = "{weights.name}"\n'
        'devices = ["cpu"]\n'
        'precision = "float32"\n'
        "[watch]\n"
        "stability_wait_s = 0.2\n"
        "rescan_interval_s = 0.5\n"
        "[metrics]\n"
        "enabled = false\n"
        "[logging]\n"
        'format = "json"\n'
    )
    return config


@pytest.mark.slow
def test_daemon_runs_the_learned_engine_and_records_the_weights_hash(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Enhancer(EnhancerSpec(in_ch=1, illumination_scale=2)).eval()
    with torch.no_grad():
        net.head.conv.bias.fill_(0.3)
    weights = tmp_path / "enhancer.safetensors"
    digest = save_weights(weights, net, {"run": "daemon-test"})
    config = write_config(tmp_path, weights)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRDAEMON_", "NOTIFY_", "WATCHDOG_"))}
    daemon = subprocess.Popen([sys.executable, "-m", "drdaemon", "run", "--config", str(config)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
        deadline = time.monotonic() + 60
        while not inbox.is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
        rng = np.random.default_rng(0)
        shapes = [(61, 83), (40, 37)]
        for i, shape in enumerate(shapes):
            pixels = rng.integers(500, 40000, shape).astype(np.uint16)
            tifffile.imwrite(tmp_path / f"f{i}.tif", pixels)
            (tmp_path / f"f{i}.tif").rename(inbox / f"f{i}.tif")
        while len(list(outbox.glob("*.json"))) < len(shapes) and time.monotonic() < deadline:
            assert daemon.poll() is None, daemon.stdout.read().decode(errors="replace")
            time.sleep(0.05)
    finally:
        daemon.send_signal(signal.SIGTERM)
        output = daemon.communicate(timeout=60)[0].decode(errors="replace")
    assert daemon.returncode == 0, output
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
