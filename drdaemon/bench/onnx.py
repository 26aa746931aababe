"""``drdaemon bench --engine onnx``: ONNX Runtime (and OpenVINO) beside the PyTorch engine.

Every case runs the same frame through the daemon's own path (percentile window, the
network, 16 bits), in rounds: each round runs every case once, so a load that comes and goes
on a shared machine touches every case alike; the figure per case is the median over the
rounds. Printed per case: the median time of the whole engine call, megapixels per second,
the difference from the PyTorch float32 output (RMS and maximum in output levels, PSNR) and
the speed against the PyTorch half-precision case (bfloat16 on a CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drdaemon.bench.cli import psnr_u16
from drdaemon.engines.base import Engine


@dataclass
class Case:
    label: str
    run: Callable[[np.ndarray], np.ndarray]
    seconds: list[float] = field(default_factory=list)
    pixels: np.ndarray | None = None


def _openvino_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """The model on OpenVINO's CPU plugin, fed and read exactly as the ONNX Runtime engine does."""
    import openvino

    from drdaemon.engines.onnx_runtime import frame_to_unit_input
    from drdaemon.kernels.window import robust_window, unit_to_u16

    core = openvino.Core()
    compiled: Any = core.compile_model(
        str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    )

    def run(frame: np.ndarray) -> np.ndarray:
        unit = frame_to_unit_input(frame, robust_window(frame))
        return unit_to_u16(np.asarray(compiled([unit])[0])[0, 0])

    return run


def _pixels_of(engine: Engine) -> Callable[[np.ndarray], np.ndarray]:
    def run(frame: np.ndarray) -> np.ndarray:
        return engine.enhance(frame).pixels

    return run


def bench_onnx(args: argparse.Namespace, frame: np.ndarray) -> None:
    import torch

    from drdaemon.bench.cli import _precision_names
    from drdaemon.engines.net import NetEngine, prepare_runtime
    from drdaemon.engines.onnx_runtime import CPU_PROVIDER, OnnxEngine, OrtRuntime, open_session
    from drdaemon.io.onnx_model import read_onnx_model
    from drdaemon.io.weights import load_weights

    if args.weights is None or not args.onnx:
        raise SystemExit("drdaemon bench --engine onnx needs --weights WEIGHTS.safetensors and --onnx MODEL.onnx...")
    threads = max(1, args.threads)
    torch.set_num_threads(threads)
    print(f"threads: {threads} (torch and ONNX Runtime intra-op; --threads)")
    loaded = load_weights(args.weights)
    print(
        f"weights: {args.weights} (sha256 {loaded.sha256[:16]}..., illumination scale "
        f"{loaded.model.spec.illumination_scale}, {loaded.name})"
    )
    runtime = prepare_runtime(loaded.model, torch.device("cpu"))
    cases: list[Case] = []
    for precision in _precision_names(args.precisions, cuda=False):
        engine = NetEngine(runtime, loaded.sha256, precision, args.memory_budget_mb)
        cases.append(Case(f"pytorch {precision}", _pixels_of(engine)))
    for path in args.onnx:
        info = read_onnx_model(path)
        if info.source_weights_sha256 != loaded.sha256:
            print(f"note: {path.name} was exported from weights {info.source_weights_sha256[:16]}..., not --weights")
        session = open_session(info.path, [CPU_PROVIDER], threads)
        ort = OnnxEngine(OrtRuntime(session, "cpu", CPU_PROVIDER, info.precision, info), args.memory_budget_mb)
        cases.append(Case(f"onnxruntime {path.name} ({info.precision})", _pixels_of(ort)))
        if args.openvino:
            try:
                cases.append(Case(f"openvino {path.name} ({info.precision})", _openvino_runner(info.path, threads)))
            except (ImportError, RuntimeError) as exc:  # a model OpenVINO's ONNX front end cannot convert
                print(f"note: openvino cannot run {path.name}: {' '.join(str(exc).split())[-300:]}")
    for case in cases:  # warm-up: first allocations, kernel selection
        case.run(frame)
    for _ in range(max(1, args.repeats)):
        for case in cases:
            start = time.perf_counter()
            case.pixels = case.run(frame)
            case.seconds.append(time.perf_counter() - start)
    reference = cases[0].pixels
    half = next((c for c in cases if c.label.startswith("pytorch") and "float32" not in c.label), None)
    megapixels = frame.size / 1e6
    for case in cases:
        median = statistics.median(case.seconds)
        line = (
            f"  {case.label:48s}: {median * 1e3:9.1f} ms ({megapixels / median:6.2f} MP/s; "
            f"runs {', '.join(f'{s:.2f}' for s in case.seconds)} s)"
        )
        if case is not cases[0] and reference is not None and case.pixels is not None:
            line += f", {difference(reference, case.pixels, cases[0].label)}"
        if half is not None and case is not half:
            line += f", {statistics.median(half.seconds) / median:.2f}x the speed of {half.label}"
        print(line, flush=True)


def difference(reference: np.ndarray, pixels: np.ndarray, label: str) -> str:
    """RMS and maximum difference in output levels (to a thousandth: the float32 bound is 1 level), and PSNR."""
    diff = reference.astype(np.float64) - pixels.astype(np.float64)
    rms, worst = float(np.sqrt(np.mean(diff**2))), float(np.abs(diff).max())
    return f"vs {label}: RMS {rms:.3f} levels, max {worst:.0f} levels, PSNR {psnr_u16(reference, pixels):.1f} dB"


__all__ = ["bench_onnx", "difference"]
