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

from drdaemon.io.durable import file_sha256
from drdaemon.io.weights import load_weights, save_weights
from drdaemon.model.network import Enhancer, EnhancerSpec


def write_config(root: Path, weights: Path | None) -> Path:
    """A net-engine config; ``weights`` None leaves the key out (the shipped weights)."""
    config = root / "daemon.toml"
    config.write_text(
        "[folders]\ncreate = true\n"
        "[engine]\n"
        'name = "net"\n' + (f'weights = "{weights.name}"\n' if weights is not None else "") + 'devices = ["cpu"]\n'
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


def run_daemon_on(root: Path, config: Path, shapes: list[tuple[int, int]]) -> tuple[Path, str]:
    """Start ``drdaemon run``, drop one random 16-bit frame per shape, wait for their sidecars, stop it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRDAEMON_", "NOTIFY_", "WATCHDOG_"))}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "drdaemon", "run", "--config", str(config)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert daemon.stdout is not None
    try:
        inbox, outbox = root / "inbox", root / "outbox"
        deadline = time.monotonic() + 60
        while not inbox.is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
        rng = np.random.default_rng(0)
        for i, shape in enumerate(shapes):
            pixels = rng.integers(500, 40000, shape).astype(np.uint16)
            tifffile.imwrite(root / f"f{i}.tif", pixels)
            (root / f"f{i}.tif").rename(inbox / f"f{i}.tif")
        while len(list(outbox.glob("*.json"))) < len(shapes) and time.monotonic() < deadline:
            assert daemon.poll() is None, daemon.stdout.read().decode(errors="replace")
            time.sleep(0.05)
    finally:
        daemon.send_signal(signal.SIGTERM)
        output = daemon.communicate(timeout=60)[0].decode(errors="replace")
    assert daemon.returncode == 0, output
    return outbox, output


@pytest.mark.slow
def test_daemon_runs_the_learned_engine_and_records_the_weights_hash(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Enhancer(EnhancerSpec(in_ch=1, illumination_scale=2)).eval()
    assert net.head.conv.bias is not None
    with torch.no_grad():
        net.head.conv.bias.fill_(0.3)
    weights = tmp_path / "enhancer.safetensors"
    digest = save_weights(weights, net, {"run": "daemon-test"})
    shapes = [(61, 83), (40, 37)]
    outbox, output = run_daemon_on(tmp_path, write_config(tmp_path, weights), shapes)
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
    outbox, output = run_daemon_on(tmp_path, write_config(tmp_path, None), [(64, 96)])
    sidecar = json.loads((outbox / "f0.tif.json").read_text())
    assert sidecar["engine"]["name"] == "net", output
    assert sidecar["engine"]["weights_sha256"] == file_sha256(SHIPPED_WEIGHTS) == card["weights"]["sha256"]
    assert sidecar["engine"]["parameters"]["weights_name"] == card["name"]
    enhanced = tifffile.imread(outbox / "f0.tif")
    assert enhanced.shape == (64, 96) and enhanced.dtype == np.uint16 and enhanced.std() > 0
