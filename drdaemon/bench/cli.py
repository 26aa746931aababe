"""``drdaemon bench``: how fast an engine is, bare and inside the daemon, on this machine.

For a synthetic frame (5732 x 2333 uint16 by default) it prints:

* ``--engine net``: parameter count, then per illumination scale and precision the compute
  time per frame (median after warm-up; CUDA events on a GPU), megapixels per second, the
  whole ``enhance`` call (upload and download included), peak device memory (peak resident
  memory on the CPU), whether the frame was tiled, and for half precision its error against
  float32 (PSNR, RMS and maximum in 16-bit output levels); with ``--tile-check`` also the
  exact tiler's error against the whole-frame pass in the same precision;
* ``--engine classical``: the median read, enhance and write times of one frame;
* ``--engine pipeline``: per step of the preset (``--preset``, default ``detail``) its median
  time, then the whole ``enhance`` call and its megapixels per second with OpenCV on
  ``--threads`` threads, and the cost of a non-local-means step on the same frame apart
  (no preset that is meant to be fast has one);
* ``--engine identity``: the daemon's host cost per frame by stage (read, hashes, window,
  staging copies, encode, write, fsync, sidecar) and the frame rate the reader, worker and
  writer counts allow (:mod:`drdaemon.bench.host`), then the folder test with the identity
  engine, whose daemon/bare ratio is the pipeline's own overhead;
* for both, the end-to-end rate of a real ``drdaemon run`` process on a folder of frames
  against the bare engine loop (read, enhance, write) on the same frames.

``--compression-table`` prints instead the size and the encode, write and read times of every
``output.compression`` on the classical engine's output of a synthetic part
(:mod:`drdaemon.bench.compression`).

Benchmark figures are printed, never asserted: speed targets belong here, not in tests.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from drdaemon.bench.timing import median_seconds
from drdaemon.defaults import COMPRESSION, COMPRESSIONS, MEMORY_BUDGET_MB, PRECISIONS, precision_for_device
from drdaemon.engines.registry import ENGINES

if TYPE_CHECKING:
    from drdaemon.engines.base import Engine

DEFAULT_HEIGHT, DEFAULT_WIDTH = 2333, 5732


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=(*ENGINES.names(), "onnx"),
        default="classical",
        help="which engine of the registry to benchmark (default: classical); classical, pipeline, net and "
        "identity have their own detailed benches, any other engine is timed with its default settings",
    )
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT, help="frame height (default 2333)")
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH, help="frame width (default 5732)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case after warm-up (median)")
    parser.add_argument("--frames", type=int, default=20, help="frames in the daemon folder test; 0 skips it")
    parser.add_argument(
        "--weights", type=Path, default=None, help="net: a .safetensors file (default: random weights, same speed)"
    )
    parser.add_argument("--in-ch", type=int, choices=(1, 3), default=1, help="net: input channels of random weights")
    parser.add_argument("--scales", default="1,4", help="net: illumination scales to run (default 1,4)")
    parser.add_argument(
        "--precisions",
        default="float32,half",
        help="net: float32, half (float16 on CUDA, bfloat16 on the CPU), float16, bfloat16, auto "
        "(engine.precision's default on the device: the same as half)",
    )
    parser.add_argument(
        "--daemon-scales", default=None, help="net: scales also run through the daemon (default: all of --scales)"
    )
    parser.add_argument("--device", default="auto", help="net: auto, cpu or cuda:N")
    parser.add_argument("--memory-budget-mb", type=int, default=MEMORY_BUDGET_MB, help="net: tiling budget")
    parser.add_argument("--compile", action="store_true", help="net: torch.compile the model")
    parser.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default=COMPRESSION,
        help=f"output compression, for the daemon and the bare loop alike (default {COMPRESSION})",
    )
    parser.add_argument(
        "--compression-table",
        action="store_true",
        help="only print the size, encode, write and read time of every output.compression on the "
        "classical engine's output of a synthetic part (or --frame), at --width x --height",
    )
    parser.add_argument(
        "--stability-wait", type=float, default=0.2, help="daemon watch.stability_wait_s in the folder test (seconds)"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up on the daemon after this long")
    parser.add_argument(
        "--frame",
        type=Path,
        default=None,
        help="benchmark on this frame file (TIFF, PNG or DICOM) instead of a synthetic one",
    )
    parser.add_argument(
        "--readers", type=int, default=0, help="daemon service.readers in the folder test (0: the daemon's default)"
    )
    parser.add_argument(
        "--writers", type=int, default=0, help="daemon service.writers in the folder test (0: the daemon's default)"
    )
    parser.add_argument(
        "--preset",
        default="detail",
        help="pipeline: the preset to time (default detail; see drdaemon.pipeline.presets)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="pipeline: OpenCV threads (cv2.setNumThreads; default 2, two cores)"
    )
    parser.add_argument(
        "--nlm-repeats", type=int, default=1, help="pipeline: timed runs of the non-local-means step (0 skips it)"
    )
    parser.add_argument(
        "--onnx",
        type=Path,
        nargs="+",
        default=[],
        metavar="MODEL.onnx",
        help="onnx: models from `drdaemon export-onnx` (of --weights) timed on ONNX Runtime beside the PyTorch "
        "engine in --precisions, in the same rounds on the same frame",
    )
    parser.add_argument(
        "--openvino",
        action="store_true",
        help="onnx: also time every --onnx model on OpenVINO's CPU plugin (float32 inference hint)",
    )
    parser.add_argument(
        "--tile-check",
        type=int,
        default=0,
        metavar="SIDE",
        help="net: also run the exact tiler with SIDE x SIDE tiles and print its error "
        "against the whole frame in the same precision (0: off)",
    )


# -- shared helpers ----------------------------------------------------------------------------


def synthetic_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A 16-bit DR-like frame: smooth attenuation, a few dense parts, quantum noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    thickness = 0.6 + 0.4 * np.sin(xx / (width / 5)) * np.cos(yy / (height / 3))
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.03, 0.15) * height
        thickness += 0.8 * ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
    signal = 52000 * np.exp(-1.2 * thickness)
    noisy = signal + rng.normal(0, 1, signal.shape).astype(np.float32) * np.sqrt(signal + 100) * 4
    return np.clip(noisy + 800, 0, 65535).astype(np.uint16)


def machine_description() -> list[str]:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        f"machine: {cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), python {platform.python_version()}"
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(f"gpu cuda:{i}: {props.name}, {props.total_memory / 2**30:.1f} GiB")
    else:
        lines.append("gpu: none visible (CUDA not available)")
    return lines


def psnr_u16(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(65535.0**2 / mse)


def difference_text(reference: np.ndarray, pixels: np.ndarray, label: str) -> str:
    """PSNR, RMS and maximum absolute difference of two 16-bit frames, in output levels."""
    diff = reference.astype(np.float64) - pixels.astype(np.float64)
    rms, worst = float(np.sqrt(np.mean(diff**2))), float(np.abs(diff).max())
    return f"PSNR vs {label} {psnr_u16(reference, pixels):.1f} dB, RMS {rms:.1f} levels, max {worst:.0f} levels"


class ResidentPeak:
    """Peak resident memory of this process on Linux, resettable through /proc/self/clear_refs."""

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def reset(self) -> bool:
        self.base = self._status("VmRSS") or 0
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def peak_above_base(self) -> int | None:
        peak = self._status("VmHWM")
        return None if peak is None else peak - self.base


# -- the daemon in a folder -------------------------------------------------------------------


@dataclass
class FolderRun:
    frames: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.frames / self.seconds


def write_frames(folder: Path, frame: np.ndarray, count: int) -> list[Path]:
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"frame_{i:03d}.tif"
        # Roll the frame so every file differs (distinct hashes), at no cost to realism.
        tifffile.imwrite(path, np.roll(frame, 37 * i, axis=1), photometric="minisblack")
        paths.append(path)
    return paths


def bare_loop(engine: Engine, paths: list[Path], out: Path, compression: str) -> FolderRun:
    """What the daemon's pipeline adds to: read, enhance and write each frame in turn."""
    from drdaemon.io.durable import atomic_write
    from drdaemon.io.formats import output_format
    from drdaemon.io.readers import read_frame

    out.mkdir(parents=True, exist_ok=True)
    output = output_format("tiff", compression)
    start = time.perf_counter()
    for path in paths:
        frame = read_frame(path)
        result = engine.enhance(frame.pixels)
        atomic_write((out / path.name).with_suffix(output.suffix), output.encode(result.pixels, frame.tags))
    return FolderRun(len(paths), time.perf_counter() - start)


def daemon_config(
    root: Path,
    engine_table: dict[str, object],
    compression: str,
    stability_wait: float,
    service: dict[str, object] | None = None,
) -> Path:
    """A daemon configuration for the folder test: folders under ``root``, no metrics, quiet logs."""
    import tomli_w

    config = {
        "folders": {name: name for name in ("inbox", "outbox", "archive", "failed", "work")},
        "engine": engine_table,
        "output": {"compression": compression},
        "watch": {"stability_wait_s": stability_wait, "rescan_interval_s": 1.0},
        "metrics": {"enabled": False},
        "logging": {"level": "WARNING", "format": "json"},
    }
    if service:
        config["service"] = service
    path = root / "bench.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def run_daemon_on_folder(
    root: Path,
    staged: list[Path],
    engine_table: dict[str, object],
    compression: str,
    stability_wait: float,
    timeout: float,
    service: dict[str, object] | None = None,
) -> FolderRun:
    """Start ``drdaemon run``, wait until it is ready, drop the frames in, time until all sidecars exist.

    Readiness comes over the systemd notify protocol (a socket of our own), so engine
    start-up and warm-up are not counted; the frames are moved in at once by rename.
    """
    config = daemon_config(root, engine_table, compression, stability_wait, service)
    inbox, outbox = root / "inbox", root / "outbox"
    for folder in ("inbox", "outbox", "archive", "failed", "work"):
        (root / folder).mkdir(exist_ok=True)
    notify_path = root / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(1.0)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
    log_path = root / "daemon.log"
    command = [sys.executable, "-m", "drdaemon", "run", "--config", str(config)]
    with log_path.open("wb") as log, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env) as daemon:
        try:
            _wait_ready(listener, daemon, timeout, log_path)
            start = time.perf_counter()
            for path in staged:
                path.rename(inbox / path.name)
            while len(list(outbox.glob("*.json"))) < len(staged):
                if daemon.poll() is not None:
                    raise RuntimeError(
                        f"the daemon exited with {daemon.returncode}; see {log_path}:\n" + _tail(log_path)
                    )
                if time.perf_counter() - start > timeout:
                    raise RuntimeError(f"the daemon did not finish {len(staged)} frames in {timeout:.0f} s")
                time.sleep(0.01)
            elapsed = time.perf_counter() - start
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
            listener.close()
    failed = list((root / "failed").glob("*.reason.json"))
    if failed:
        raise RuntimeError(f"{len(failed)} frame(s) failed in the daemon: {failed[0].read_text()[:500]}")
    return FolderRun(len(staged), elapsed)


def _wait_ready(listener: socket.socket, daemon: subprocess.Popen[bytes], timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with {daemon.returncode} before it was ready:\n" + _tail(log_path))
        try:
            message = listener.recv(4096).decode(errors="replace")
        except TimeoutError:
            continue
        if "READY=1" in message.split("\n"):
            return
    raise RuntimeError("the daemon did not report ready in time")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def folder_comparison(
    engine: Engine, engine_table: dict[str, object], frame: np.ndarray, args: argparse.Namespace, label: str
) -> None:
    """Daemon end-to-end against the bare engine loop on the same ``args.frames`` frames.

    The bare loop runs before and after the daemon and the ratio uses their mean, so a
    machine whose load drifts during the benchmark biases neither side.
    """
    with tempfile.TemporaryDirectory(prefix="drdaemon-bench-") as tmp:
        root = Path(tmp)
        staged = write_frames(root / "staging", frame, args.frames)
        before = bare_loop(engine, staged, root / "bare-out", args.compression)
        shutil.rmtree(root / "bare-out")
        try:
            daemon = run_daemon_on_folder(
                root, staged, engine_table, args.compression, args.stability_wait, args.timeout, service_table(args)
            )
        except (RuntimeError, OSError) as exc:
            print(f"  {label}: daemon end-to-end FAILED: {exc}")
            return
        after = bare_loop(engine, sorted((root / "archive").glob("*.tif")), root / "bare-out", args.compression)
    bare_rate = (before.rate + after.rate) / 2
    print(
        f"  {label}: bare engine loop {bare_rate:.3f} frames/s (before {before.rate:.3f}, after {after.rate:.3f}), "
        f"daemon end-to-end {daemon.rate:.3f} frames/s over {daemon.frames} frames, "
        f"ratio {daemon.rate / bare_rate:.2f}",
        flush=True,
    )


def service_table(args: argparse.Namespace) -> dict[str, object]:
    """The daemon's ``[service]`` keys the benchmark was asked to set (reader and writer counts)."""
    return {key: value for key, value in (("readers", args.readers), ("writers", args.writers)) if value > 0}


# -- the engines ----------------------------------------------------------------------------


def bench_identity(args: argparse.Namespace, frame: np.ndarray) -> None:
    """The host path alone: stage costs per frame, then the daemon against the bare loop."""
    from drdaemon.bench.host import host_cost_lines, measure_host_costs
    from drdaemon.engines.classical import ClassicalEngine
    from drdaemon.service.threads import stage_threads

    pixels = frame if frame.dtype == np.uint16 else ClassicalEngine(method="identity").enhance(frame).pixels
    costs = measure_host_costs(pixels, args.compression, args.repeats)
    readers, writers = stage_threads(1, args.readers, args.writers)
    print(f"identity engine, {args.compression} output, median of {args.repeats}:")
    for line in host_cost_lines(costs, readers, 1, writers):
        print("  " + line)
    if args.frames > 0:
        folder_comparison(
            ClassicalEngine(method="identity"),
            {"name": "identity"},
            frame,
            args,
            f"identity, {readers} reader(s), {writers} writer(s)",
        )


def bench_classical(args: argparse.Namespace, frame: np.ndarray) -> None:
    from drdaemon.engines.classical import ClassicalEngine
    from drdaemon.io.formats import output_format
    from drdaemon.io.readers import read_frame

    engine = ClassicalEngine()
    engine.warm_up()
    with tempfile.TemporaryDirectory(prefix="drdaemon-bench-") as tmp:
        path = write_frames(Path(tmp), frame, 1)[0]
        read_s = median_seconds(lambda: read_frame(path), args.repeats)
        enhance_s = median_seconds(lambda: engine.enhance(frame), args.repeats)
        pixels = engine.enhance(frame).pixels
        out = Path(tmp) / "out.tif"
        output = output_format("tiff", args.compression)
        write_s = median_seconds(lambda: out.write_bytes(output.encode(pixels)), args.repeats)
    print(f"classical CLAHE (clip {engine.clahe_clip_limit}, grid {engine.clahe_tile_grid}), median of {args.repeats}:")
    print(
        f"  read {read_s * 1e3:.1f} ms, enhance {enhance_s * 1e3:.1f} ms, write ({args.compression}) "
        f"{write_s * 1e3:.1f} ms; sum {(read_s + enhance_s + write_s):.3f} s "
        f"= {1 / (read_s + enhance_s + write_s):.2f} frames/s"
    )
    if args.frames > 0:
        folder_comparison(engine, {"name": "classical"}, frame, args, "classical")


def bench_pipeline(args: argparse.Namespace, frame: np.ndarray) -> None:
    """Each step's median time in the preset, the whole call, and non-local means apart."""
    from drdaemon.config import PipelineConfig
    from drdaemon.engines.pipeline import PipelineEngine, build_pipeline_engine
    from drdaemon.pipeline.steps import NlmStep, NormaliseStep

    engine = build_pipeline_engine(PipelineConfig(preset=args.preset), threads=args.threads)
    engine.warm_up()
    runs = []
    for _ in range(max(1, args.repeats)):
        start = time.perf_counter()
        result = engine.enhance(frame)
        runs.append((time.perf_counter() - start, result.timings))
    total = statistics.median(seconds for seconds, _ in runs)
    megapixels = frame.size / 1e6
    print(
        f"pipeline preset {args.preset!r}, OpenCV {cv2_threads()} threads, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {load_average()}, median of {len(runs)}:"
    )
    for key in runs[0][1]:
        step_s = statistics.median(timings[key] for _, timings in runs)
        print(f"  {key:<24} {step_s * 1e3:8.1f} ms")
    print(f"  enhance (whole call)     {total * 1e3:8.1f} ms = {megapixels / total:.1f} MP/s")
    if args.nlm_repeats > 0:
        nlm = PipelineEngine((NormaliseStep(), NlmStep()))
        nlm.warm_up()
        nlm_s = median_seconds(lambda: nlm.enhance(frame), args.nlm_repeats)
        print(
            f"  non-local means apart (normalise + nlm, 7 x 7 template, 21 x 21 search), median of "
            f"{args.nlm_repeats}: {nlm_s:.2f} s = {megapixels / nlm_s:.2f} MP/s"
        )
    if args.frames > 0:
        folder_comparison(engine, {"name": "pipeline", "pipeline": {"preset": args.preset}}, frame, args, "pipeline")


def cv2_threads() -> int:
    import cv2

    return int(cv2.getNumThreads())


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def _precision_names(spec: str, cuda: bool) -> list[str]:
    names = []
    for item in spec.split(","):
        item = item.strip()
        if item == "half":
            item = "float16" if cuda else "bfloat16"
        elif item == "auto":  # what engine.precision = "auto" (the default) runs on this device
            item = precision_for_device("auto", "cuda" if cuda else "cpu")
        if item not in PRECISIONS:
            raise SystemExit(f"drdaemon bench: unknown precision {item!r}")
        names.append(item)
    return names


def _scales(spec: str) -> list[int]:
    return [int(s) for s in spec.split(",") if s.strip()]


def bench_net(args: argparse.Namespace, frame: np.ndarray) -> None:
    import torch

    from drdaemon.engines.net import NetEngine, prepare_runtime, resolve_device
    from drdaemon.io.weights import load_weights, save_weights
    from drdaemon.model.network import Enhancer, EnhancerSpec, count_parameters
    from drdaemon.model.tiling import TileSize

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.weights is not None:
        loaded = load_weights(args.weights)
        state, in_ch = loaded.model.state_dict(), loaded.model.spec.in_ch
        print(f"weights: {args.weights} (sha256 {loaded.sha256[:16]}...)")
    else:
        torch.manual_seed(0)
        random_net = Enhancer(EnhancerSpec(in_ch=args.in_ch))
        bias = random_net.head.conv.bias
        assert bias is not None  # the head's convolution is built with a bias
        with torch.no_grad():
            bias.fill_(0.3)  # an illumination map that is not all zero
        state, in_ch = random_net.state_dict(), args.in_ch
        print("weights: random (speed does not depend on the values; PSNR is indicative only)")
    print(
        f"enhancer: {count_parameters(Enhancer(EnhancerSpec(in_ch=in_ch))):,} parameters with in_ch {in_ch} "
        f"({count_parameters(Enhancer(EnhancerSpec(in_ch=3))):,} with in_ch 3, the published count), "
        f"device {device}, channels_last, compile {args.compile}, memory budget {args.memory_budget_mb} MB"
    )
    megapixels = frame.size / 1e6
    daemon_scales = _scales(args.daemon_scales) if args.daemon_scales is not None else _scales(args.scales)
    resident = ResidentPeak()
    compute_by_scale: dict[tuple[int, str], float] = {}
    for scale in _scales(args.scales):
        model = Enhancer(EnhancerSpec(in_ch=in_ch, illumination_scale=scale))
        model.load_state_dict(state)
        runtime = prepare_runtime(model.eval(), device, channels_last=True, compile_model=args.compile)
        reference: np.ndarray | None = None
        for precision in _precision_names(args.precisions, cuda):
            engine = NetEngine(runtime, "bench", precision, args.memory_budget_mb)
            engine.warm_up()
            engine.enhance(frame)  # the first full-size frame pays allocator and kernel selection costs
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            else:
                resident.reset()
            results = []
            for _ in range(max(1, args.repeats)):
                start = time.perf_counter()
                result = engine.enhance(frame)
                results.append((result, time.perf_counter() - start))
            if cuda:
                peak = torch.cuda.max_memory_allocated(device) - base
                reserved = torch.cuda.max_memory_reserved(device)
                free, total = torch.cuda.mem_get_info(device)
                peak_text = (
                    f"peak device memory {peak / 2**30:.2f} GiB for the frame (allocator reserved "
                    f"{reserved / 2**30:.2f} GiB; device in use {(total - free) / 2**30:.2f} GiB "
                    "incl. the CUDA context, as nvidia-smi counts)"
                )
            else:
                resident_peak = resident.peak_above_base()
                peak_text = (
                    "peak memory n/a"
                    if resident_peak is None
                    else f"peak resident memory +{resident_peak / 2**30:.2f} GiB"
                )
            compute = statistics.median(r.timings["compute"] for r, _ in results)
            call = statistics.median(t for _, t in results)
            upload = statistics.median(r.timings["upload"] for r, _ in results)
            download = statistics.median(r.timings["download"] for r, _ in results)
            pixels = results[-1][0].pixels
            params = results[-1][0].parameters
            compute_by_scale[(scale, precision)] = compute
            line = (
                f"  s={scale} {precision:8s}: compute {compute * 1e3:9.1f} ms ({megapixels / compute:8.2f} MP/s), "
                f"enhance call {call * 1e3:9.1f} ms (upload {upload * 1e3:.1f}, download {download * 1e3:.1f}), "
                f"{peak_text}, tiled {params['tiled']}"
            )
            if reference is None and precision == "float32":
                reference = pixels
            elif reference is not None:
                line += f", {difference_text(reference, pixels, 'float32')}"
            print(line, flush=True)
            if args.tile_check > 0:
                side = args.tile_check
                tiled = engine.enhance_in_tiles(frame, TileSize(side, side)).pixels
                print(
                    f"    exact tiler, {side} x {side} tiles, {precision}: "
                    f"{difference_text(pixels, tiled, 'whole frame')}",
                    flush=True,
                )
            if args.frames > 0 and scale in daemon_scales:
                with tempfile.TemporaryDirectory(prefix="drdaemon-weights-") as tmp:
                    weights = Path(tmp) / "bench.safetensors"
                    save_weights(weights, model, {"bench": True})
                    table = {
                        "name": "net",
                        "weights": str(weights),
                        "devices": [str(device)],
                        "precision": precision,
                        "memory_budget_mb": args.memory_budget_mb,
                        "compile": args.compile,
                        "warm_up_frame_size": list(frame.shape),
                    }
                    folder_comparison(engine, table, frame, args, f"s={scale} {precision}")
    for precision in _precision_names(args.precisions, cuda):
        if (1, precision) in compute_by_scale and (4, precision) in compute_by_scale:
            ratio = compute_by_scale[(1, precision)] / compute_by_scale[(4, precision)]
            print(f"  s=4 is {ratio:.1f}x faster than s=1 in {precision}")


def bench_registered(args: argparse.Namespace, frame: np.ndarray) -> None:
    """Any engine of the registry without a bench of its own: its enhance time with the default
    ``[engine]`` settings, then the daemon against the bare loop."""
    from drdaemon.config import EngineConfig
    from drdaemon.engines.registry import build_checked_engines

    engine = build_checked_engines(EngineConfig(name=args.engine))[0]
    engine.warm_up()
    enhance_s = median_seconds(lambda: engine.enhance(frame), args.repeats)
    print(
        f"{args.engine} engine ({ENGINES.entry(args.engine).summary}), median of {args.repeats}: "
        f"enhance {enhance_s * 1e3:.1f} ms = {frame.size / enhance_s / 1e6:.1f} MP/s"
    )
    if args.frames > 0:
        folder_comparison(engine, {"name": args.engine}, frame, args, args.engine)


#: The engines with a bench of their own; every other registered engine gets :func:`bench_registered`.
DETAILED_BENCHES = {
    "classical": bench_classical,
    "pipeline": bench_pipeline,
    "identity": bench_identity,
    "net": bench_net,
}


def run_bench(args: argparse.Namespace) -> int:
    for line in machine_description():
        print(line)
    if args.frame is not None:
        # As the evaluation reads it: the daemon's reader, a DICOM frame spread to 16 bits.
        from drdaemon.io.readers import read_pixels

        frame = read_pixels(args.frame)
        source = f"{args.frame.name}, {frame.dtype}"
    elif args.compression_table:
        from drdaemon.bench.compression import synthetic_part

        frame = synthetic_part(args.height, args.width)
        source = "uint16, synthetic part (drdaemon.physics, seed 0)"
    else:
        frame = synthetic_frame(args.height, args.width)
        source = "uint16, synthetic"
    print(f"frame: {frame.shape[1]} x {frame.shape[0]} ({frame.size / 1e6:.2f} MP), {source}")
    if args.compression_table:
        from drdaemon.bench.compression import print_compression_table

        print_compression_table(frame, source.split(", ", 1)[-1], args.repeats)
    elif args.engine == "onnx":
        from drdaemon.bench.onnx import bench_onnx

        bench_onnx(args, frame)
    else:
        DETAILED_BENCHES.get(args.engine, bench_registered)(args, frame)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drdaemon.bench", description=__doc__.split("\n\n")[0])
    add_bench_arguments(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
