"""What the tests build again and again: frames and their bytes, daemon configs, folders, free ports,
the tiny test network and its weights file, and a real ``drdaemon run`` process on temporary folders.

The fixtures over these helpers live in ``tests/conftest.py``. Focused helpers stay in their own
modules: ``tests/dicom_testkit.py`` (DICOM objects; it skips without pydicom), ``tests/trainer_testkit.py``
(training data and tiny trainer configs; it imports the trainer) and ``tests/toy_engine.py`` (the
example of an engine that is one file plus its registration).
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile
import torch
from numpy.typing import NDArray

from drdaemon.config import Folders, Settings
from drdaemon.engines import ClassicalEngine, Enhanced
from drdaemon.folders.space import FreeBytes, free_bytes
from drdaemon.io.sidecar import Sidecar
from drdaemon.io.weights import save_weights
from drdaemon.kernels.window import Window
from drdaemon.model.network import Enhancer, EnhancerSpec
from drdaemon.service.daemon import Daemon

#: The repository root (the folder that holds ``drdaemon/`` and ``tests/``).
REPO = Path(__file__).resolve().parents[1]
#: The daemon's five folders, by their default names.
FOLDER_NAMES = ("inbox", "outbox", "archive", "failed", "work")

# -- frames ---------------------------------------------------------------------------------------


def random_frame(
    seed: int = 0, shape: tuple[int, int] = (48, 64), low: int = 200, high: int = 5000
) -> NDArray[np.uint16]:
    """A uint16 frame of ``shape`` (rows, columns) with uniform random values in [low, high), seeded."""
    return np.random.default_rng(seed).integers(low, high, shape).astype(np.uint16)


def tiff_bytes(pixels: NDArray[Any], **tiff_options: Any) -> bytes:
    """``pixels`` as the bytes of a TIFF file (``tiff_options`` go to ``tifffile.imwrite``)."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, **tiff_options)
    return buffer.getvalue()


def png_bytes(pixels: NDArray[Any]) -> bytes:
    """``pixels`` (uint8 or uint16, 2-D) as the bytes of a PNG file."""
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok, "OpenCV could not encode the PNG"
    return encoded.tobytes()


def frame_bytes(seed: int = 0, shape: tuple[int, int] = (48, 64), **tiff_options: Any) -> bytes:
    """The TIFF bytes of :func:`random_frame` (``seed``, ``shape``): what a station drops in the inbox."""
    return tiff_bytes(random_frame(seed, shape), **tiff_options)


def sha(data: bytes) -> str:
    """The sha256 of ``data`` as a sidecar records it (lower-case hex)."""
    return hashlib.sha256(data).hexdigest()


# -- folders, configs and ports ---------------------------------------------------------------------


def make_folders(root: Path) -> Folders:
    """The daemon's default folders resolved under ``root``, each created (empty)."""
    folders = Folders().resolved(root)
    for _, path in folders:
        path.mkdir()
    return folders


#: The ``[folders]`` table naming every folder by its default name, relative to the config file.
NAMED_FOLDERS = "".join(f'{name} = "{name}"\n' for name in FOLDER_NAMES)
#: A quick ``[watch]`` table: frames are picked up within a second.
QUICK_WATCH = "stability_wait_s = 0.2\nrescan_interval_s = 0.5\n"
#: The ``[watch]`` table of a station's daemon: quick, with a grace of 3 s for incomplete files.
STATION_WATCH = "stability_wait_s = 0.2\nincomplete_grace_s = 3.0\nrescan_interval_s = 1.0\n"


def write_config(
    path: Path,
    *,
    folders: str = "create = true\n",
    engine: str = 'name = "classical"\n',
    watch: str = QUICK_WATCH,
    metrics: str = "enabled = false\n",
    logging: str = 'format = "json"\n',
    extra: str = "",
) -> Path:
    """A daemon config file at ``path``; returns ``path``.

    Each keyword is the body of its table (``""`` leaves the table out); ``extra`` is appended
    as it is (further tables, ``[[engine.pipeline.steps]]``). The defaults: folders created
    beside the config, the classical engine, a quick watch, no metrics server, JSON logs.
    """
    tables = {"folders": folders, "engine": engine, "watch": watch, "metrics": metrics, "logging": logging}
    path.write_text("".join(f"[{name}]\n{body}" for name, body in tables.items() if body) + extra)
    return path


def net_engine(weights: str | None, devices: Sequence[str] = ("cpu",), precision: str | None = "float32") -> str:
    """The body of an ``[engine]`` table running the network: ``weights`` None leaves the key out (the
    shipped weights), ``precision`` None leaves it at its default."""
    body = 'name = "net"\n' + (f'weights = "{weights}"\n' if weights is not None else "")
    body += "devices = [" + ", ".join(f'"{device}"' for device in devices) + "]\n"
    return body + (f'precision = "{precision}"\n' if precision is not None else "")


def metrics_on(port: int) -> str:
    """The body of a ``[metrics]`` table serving on 127.0.0.1:``port``."""
    return f'address = "127.0.0.1"\nport = {port}\n'


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on ``address`` right now (the system picks it); no test uses a fixed port."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
    return port


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "the condition") -> None:
    """Poll ``condition`` every 20 ms; fail naming ``what`` if it does not hold within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def run_until(daemon: Daemon, condition: Callable[[], bool], timeout: float = 20.0) -> int:
    """Run an in-process daemon until ``condition`` holds (or ``timeout`` seconds pass), then stop it; its exit status."""

    def stop_when_done() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not condition():
            time.sleep(0.02)
        daemon.request_stop()

    threading.Thread(target=stop_when_done, daemon=True).start()
    return daemon.run(install_signal_handlers=False)


# -- an in-process daemon ---------------------------------------------------------------------------

#: The ``[watch]`` of an in-process daemon: a frame is ready 50 ms after its last change.
FAST_WATCH: dict[str, float] = {"stability_wait_s": 0.05, "rescan_interval_s": 0.2}


def daemon_settings(root: Path, **tables: Any) -> Settings:
    """Settings of an in-process daemon with its folders resolved under ``root``: :data:`FAST_WATCH`
    and no metrics server, unless ``tables`` (``watch=``, ``folders=``, ``retention=`` ...: each a
    table as ``Settings`` takes it; ``watch={}`` is the default watch) say otherwise."""
    chosen: dict[str, Any] = {"watch": FAST_WATCH, "metrics": {"enabled": False}} | tables
    settings = Settings(**chosen)
    settings.folders = settings.folders.resolved(root)
    return settings


def in_process_daemon(root: Path, free_space: FreeBytes = free_bytes, **tables: Any) -> Daemon:
    """A classical-engine daemon (not running) on :func:`daemon_settings` (``root``, ``tables``), its inbox created."""
    settings = daemon_settings(root, **tables)
    settings.folders.inbox.mkdir(parents=True, exist_ok=True)
    return Daemon(settings, engines=[ClassicalEngine()], free_space=free_space)


class ScriptedEngine:
    """An engine whose answer per frame is scripted by the test (no real enhancement needed):
    ``behaviour`` is called with the count of calls so far (raise to fail the frame, sleep to be slow)."""

    name = "scripted"
    device = "cuda:7"
    weights_sha256 = "ab" * 32

    def __init__(self, behaviour: Callable[[int], None]) -> None:
        self.behaviour = behaviour
        self.calls = 0

    def warm_up(self) -> None:
        pass

    def enhance(self, frame: NDArray[Any], window: Window | None = None) -> Enhanced:
        self.calls += 1
        self.behaviour(self.calls)
        return Enhanced(frame.astype(np.uint16), {"scripted": True}, {"upload": 0.001, "compute": 0.002})


# -- the tiny test network ----------------------------------------------------------------------------


def lit_enhancer(in_ch: int = 1, scale: int = 1, seed: int = 0) -> Enhancer:
    """A random enhancer (seeded) in eval mode whose illumination map is not all zero (its last ReLU is alive)."""
    torch.manual_seed(seed)
    net = Enhancer(EnhancerSpec(in_ch=in_ch, illumination_scale=scale)).eval()
    bias = net.head.conv.bias
    assert bias is not None  # the head's convolution has one (conv3x3's default)
    with torch.no_grad():
        bias.fill_(0.3)
    return net


def write_weights(
    path: Path, in_ch: int = 1, scale: int = 1, seed: int = 0, provenance: dict[str, object] | None = None
) -> str:
    """Save :func:`lit_enhancer` (``in_ch``, ``scale``, ``seed``) as a safetensors weights file; its sha256."""
    return save_weights(path, lit_enhancer(in_ch, scale, seed), {"run": "test"} if provenance is None else provenance)


# -- a real daemon process ------------------------------------------------------------------------------


def daemon_env() -> dict[str, str]:
    """The test's environment without the daemon's own variables (DRDAEMON_*, systemd's), importing this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRDAEMON_", "NOTIFY_", "WATCHDOG_"))}
    return env | {"PYTHONPATH": str(REPO)}


def shaped_frames(shapes: Sequence[tuple[int, int]], seed: int = 0) -> list[NDArray[np.uint16]]:
    """One random uint16 frame per shape, values in [500, 40000), from one seeded generator."""
    rng = np.random.default_rng(seed)
    return [rng.integers(500, 40000, shape).astype(np.uint16) for shape in shapes]


def run_daemon_on(
    root: Path, config: Path, frames: Sequence[NDArray[np.uint16]], timeout: float = 60.0
) -> tuple[Path, str]:
    """Start ``drdaemon run`` in ``root``, drop ``frames`` as f0.tif, f1.tif, ... and wait for their
    sidecars, stop it with SIGTERM; asserts exit 0 and returns the outbox and the daemon's output."""
    daemon = subprocess.Popen(
        [sys.executable, "-m", "drdaemon", "run", "--config", str(config)],
        cwd=root,
        env=daemon_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert daemon.stdout is not None
    try:
        inbox, outbox = root / "inbox", root / "outbox"
        deadline = time.monotonic() + timeout
        while not inbox.is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
        for i, pixels in enumerate(frames):
            tifffile.imwrite(root / f"f{i}.tif", pixels)
            (root / f"f{i}.tif").rename(inbox / f"f{i}.tif")
        while len(list(outbox.glob("*.json"))) < len(frames) and time.monotonic() < deadline:
            assert daemon.poll() is None, daemon.stdout.read().decode(errors="replace")
            time.sleep(0.05)
    finally:
        daemon.send_signal(signal.SIGTERM)
        output = daemon.communicate(timeout=timeout)[0].decode(errors="replace")
    assert daemon.returncode == 0, output
    return outbox, output


class Station:
    """A temporary set of folders, a config file, and the daemon process running on them."""

    def __init__(self, root: Path, extra: str = "") -> None:
        self.root = root
        self.dirs = {name: root / name for name in FOLDER_NAMES}
        self.config = write_config(
            root / "drdaemon.toml",
            folders="create = true\n" + NAMED_FOLDERS,
            engine="",
            watch=STATION_WATCH,
            extra=extra,
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / "daemon.log"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "drdaemon", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=60)
        self.process = None
        return status

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no clean-up of any kind
        self.process.wait(timeout=30)
        self.process = None

    def drop(self, name: str, data: bytes) -> None:
        """Write a frame the way a careful station does: a temporary name, then a rename."""
        self.dirs["inbox"].mkdir(parents=True, exist_ok=True)
        temp = self.dirs["inbox"] / f"{name}.part"
        temp.write_bytes(data)
        os.rename(temp, self.dirs["inbox"] / name)

    def names(self, folder: str) -> list[str]:
        return sorted(p.name for p in self.dirs[folder].iterdir()) if self.dirs[folder].exists() else []

    def sidecars(self) -> list[Sidecar]:
        return [Sidecar.model_validate_json(p.read_bytes()) for p in sorted(self.dirs["outbox"].glob("*.tif.json"))]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log.read_text()}")
            time.sleep(0.05)
        raise AssertionError(
            f"timed out; folders: { {f: self.names(f) for f in FOLDER_NAMES} }\n{self.log.read_text()}"
        )

    def assert_exactly_once(self, inputs: dict[str, bytes]) -> None:
        """One output and one sidecar per input, raw bytes archived unchanged, nothing left over."""
        records = self.sidecars()
        originals = [Path(r.input.original_path).name for r in records]
        assert sorted(originals) == sorted(inputs), "inputs lost or processed twice"
        for record in records:
            data = inputs[Path(record.input.original_path).name]
            assert record.input.sha256 == sha(data)
            assert Path(record.input.path).read_bytes() == data
            assert sha(Path(record.output.path).read_bytes()) == record.output.sha256
        outputs = [n for n in self.names("outbox") if n.endswith(".tif")]
        assert len(outputs) == len(inputs), "an output without a sidecar"
        assert sorted(sha(p.read_bytes()) for p in self.dirs["archive"].iterdir()) == sorted(map(sha, inputs.values()))
        assert [n for n in self.names("work") if n != ".drdaemon.lock"] == []
        assert self.names("inbox") == [] and self.names("failed") == []
        assert not [n for f in FOLDER_NAMES for n in self.names(f) if n.endswith(".tmp")]
