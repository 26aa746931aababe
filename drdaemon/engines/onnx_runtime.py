"""The learned engine through ONNX Runtime: ``engine.weights = "MODEL.onnx"``.

The model is the one ``drdaemon export-onnx`` writes (float32, or INT8 with ``--quantize
int8``), checked at start-up by :func:`drdaemon.io.onnx_model.read_onnx_model`. A frame
goes the same way as through the PyTorch engine: the same percentile window
(:func:`drdaemon.kernels.window.robust_window`, measured by the daemon's reader), the same
``to_unit`` mapping, the whole frame through the network, and ``round(y * 65535)`` to 16
bits; the sidecar's ``engine.parameters`` carry the PyTorch engine's keys plus ``backend``
(``onnxruntime``) and ``provider`` (the execution provider that ran it).

Providers: ``engine.devices = ["cpu"]`` runs on ``CPUExecutionProvider``; ``["cuda:N"]`` on
``CUDAExecutionProvider`` (the ``onnxruntime-gpu`` package); ``engine.tensorrt = true`` puts
``TensorrtExecutionProvider`` first, with its engine cache in the work folder
(``.tensorrt-cache``), float16 when ``engine.precision = "float16"`` and INT8 from the QDQ
nodes of a quantised model. A provider that is not installed is a configuration error, and
a session that ONNX Runtime quietly moved to another provider is refused: the engine never
runs elsewhere than configured.

Memory: a frame whose estimated peak exceeds ``engine.memory_budget_mb`` fails with a
reason saying so; the exact tiler (:mod:`drdaemon.model.tiling`) is PyTorch-only, so such
frames need the ``.safetensors`` weights or a larger budget.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from drdaemon.config import ConfigError, EngineConfig
from drdaemon.defaults import HIGH_PERCENTILE, LOW_PERCENTILE, MEMORY_BUDGET_MB
from drdaemon.engines.base import Enhanced
from drdaemon.errors import DeviceLost, FrameError, Reason, Stage
from drdaemon.io.onnx_model import INPUT_NAME, OUTPUT_NAME, OnnxModelInfo, read_onnx_model, require_onnx
from drdaemon.io.weights import WeightsError
from drdaemon.kernels.window import U16_MAX, Window, robust_window, to_unit_float32, unit_to_u16
from drdaemon.model.tiling import FRAME_BYTES_PER_PIXEL

log = structlog.get_logger(__name__)

BACKEND = "onnxruntime"
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
#: The TensorRT engine cache, a hidden folder of the work folder (the daemon never takes it for a frame).
TENSORRT_CACHE = ".tensorrt-cache"
#: Peak live activations of a whole-frame pass through ONNX Runtime's CPU provider, in float32
#: channel maps of the network's input size. An estimate, not yet measured: the plain
#: out-of-place graph keeps about three 64-channel maps, the 64-channel concatenation and the
#: provider's layout reorders alive, against 138 maps for the PyTorch engine's in-place form.
ORT_ACTIVATION_MAPS = 330
ORT_ELEMENT_BYTES = 4


def estimated_peak_bytes(height: int, width: int, illumination_scale: int) -> int:
    """The planner's estimate of one frame's peak memory through ONNX Runtime."""
    small = -(-height // illumination_scale) * -(-width // illumination_scale)
    return int(small * ORT_ACTIVATION_MAPS * ORT_ELEMENT_BYTES + height * width * FRAME_BYTES_PER_PIXEL)


@dataclass
class OrtRuntime:
    """One ONNX Runtime session on one device, shared by that device's workers."""

    session: Any
    device: str
    provider: str
    #: The arithmetic that runs: the model's own (float32, int8), or float16 under TensorRT's fp16 mode.
    precision: str
    info: OnnxModelInfo
    lock: threading.Lock = field(default_factory=threading.Lock)


class OnnxEngine:
    """One worker of the learned engine on ONNX Runtime (same interface as :class:`NetEngine`)."""

    name = "net"

    def __init__(
        self,
        runtime: OrtRuntime,
        memory_budget_mb: int = MEMORY_BUDGET_MB,
        low_percentile: float = LOW_PERCENTILE,
        high_percentile: float = HIGH_PERCENTILE,
        warm_up_shape: tuple[int, int] | None = None,
    ) -> None:
        self.runtime = runtime
        self.device = runtime.device
        self.weights_sha256 = runtime.info.sha256
        self.memory_budget_mb = memory_budget_mb
        self.low_percentile = low_percentile
        self.high_percentile = high_percentile
        self.warm_up_shape = warm_up_shape

    def enhance(self, frame: np.ndarray, window: Window | None = None) -> Enhanced:
        if frame.ndim != 2:
            raise FrameError(Stage.ENHANCE, Reason.UNSUPPORTED, f"expected a 2-D frame, got shape {frame.shape}")
        self.check_budget(*frame.shape)
        if window is None:
            window = robust_window(frame, self.low_percentile, self.high_percentile)
        started = time.perf_counter()
        unit = frame_to_unit_input(frame, window)
        prepared = time.perf_counter()
        try:
            with self.runtime.lock:
                out = self.runtime.session.run([OUTPUT_NAME], {INPUT_NAME: unit})[0]
        except Exception as exc:  # onnxruntime raises its own classes for every kind of failure
            raise self._classify(exc) from exc
        computed = time.perf_counter()
        enhanced = out[0, 0]
        bad = int(enhanced.size - np.count_nonzero(np.isfinite(enhanced)))
        if bad:
            raise FrameError(
                Stage.ENHANCE,
                Reason.ENGINE_ERROR,
                f"the network's output is not finite (NaN or infinity) in {bad} of {frame.size} pixels "
                f"({self.runtime.precision} on {self.device}, {self.runtime.provider}); nothing was written for this frame",
            )
        pixels = unit_to_u16(enhanced)
        return Enhanced(
            pixels=pixels,
            parameters=self._parameters(window),
            timings={
                "upload": prepared - started,
                "compute": computed - prepared,
                "download": time.perf_counter() - computed,
            },
        )

    def check_budget(self, height: int, width: int) -> None:
        """Fail a frame whose estimated peak exceeds the budget, saying so (no tiler here)."""
        need = estimated_peak_bytes(height, width, self.runtime.info.spec.illumination_scale)
        if need > self.memory_budget_mb * 2**20:
            raise FrameError(
                Stage.ENHANCE,
                Reason.TOO_LARGE,
                f"a {height} x {width} frame needs about {need / 2**20:.0f} MB through ONNX Runtime, over "
                f"engine.memory_budget_mb = {self.memory_budget_mb}; the exact tiler runs only with .safetensors "
                "weights (PyTorch): set engine.weights to the safetensors file this model was exported from, or "
                "raise engine.memory_budget_mb",
            )

    def warm_up(self) -> None:
        rng = np.random.default_rng(0)
        self.enhance(rng.integers(0, U16_MAX, (96, 80), dtype=np.uint16))
        if self.warm_up_shape is not None:
            started = time.perf_counter()
            self.enhance(rng.integers(0, U16_MAX, self.warm_up_shape, dtype=np.uint16))
            log.info(
                "net_warmed_up",
                device=self.device,
                backend=BACKEND,
                frame_size=list(self.warm_up_shape),
                seconds=round(time.perf_counter() - started, 3),
            )

    def _parameters(self, window: Window) -> dict[str, Any]:
        info = self.runtime.info
        return {
            "architecture": info.spec.architecture,
            "weights_provenance_sha256": info.provenance_sha256,
            "weights_name": info.weights_name,
            "training_scheme": info.training_scheme,
            "in_ch": info.spec.in_ch,
            "illumination_scale": info.spec.illumination_scale,
            "precision": self.runtime.precision,
            "window": [window.low, window.high],
            "low_percentile": self.low_percentile,
            "high_percentile": self.high_percentile,
            "device": self.device,
            "tiled": False,
            "tile": None,
            "memory_budget_mb": self.memory_budget_mb,
            "backend": BACKEND,
            "provider": self.runtime.provider,
            "quantization": info.quantization,
            "source_weights_sha256": info.source_weights_sha256,
        }

    def _classify(self, exc: Exception) -> FrameError:
        message = f"{type(exc).__name__}: {exc}".strip()
        lowered = message.lower()
        if "allocate" in lowered or "out of memory" in lowered or "cuda" in lowered or "tensorrt" in lowered:
            return FrameError(Stage.ENHANCE, Reason.DEVICE_ERROR, f"{self.device} ({self.runtime.provider}): {message}")
        return FrameError(Stage.ENHANCE, Reason.ENGINE_ERROR, message)


def frame_to_unit_input(frame: np.ndarray, window: Window) -> np.ndarray:
    """The network's ``(1, 1, H, W)`` float32 input: the frame through its window."""
    return to_unit_float32(frame, window)[None, None]


# -- building the workers ---------------------------------------------------------------------


def available_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def resolve_provider(name: str, tensorrt: bool) -> tuple[str, int | None]:
    """A configured device name to (its first execution provider, the CUDA index or None)."""
    available = available_providers()
    if name == "auto":
        name = "cuda:0" if CUDA_PROVIDER in available else "cpu"
        log.info(
            "net_device_selected", device=name, backend=BACKEND, reason=f"devices = ['auto']; providers {available}"
        )
    if name == "cpu":
        if tensorrt:
            raise ConfigError(
                "engine.tensorrt = true needs a CUDA device in engine.devices (TensorRT does not run on the CPU)"
            )
        return CPU_PROVIDER, None
    if not name.startswith("cuda"):
        raise ConfigError(f"engine.devices: {name!r} is not a device name (use 'auto', 'cpu' or 'cuda:N')")
    try:
        index = int(name.partition(":")[2] or 0)
    except ValueError as exc:
        raise ConfigError(f"engine.devices: {name!r} is not a device name (use 'auto', 'cpu' or 'cuda:N')") from exc
    wanted = TENSORRT_PROVIDER if tensorrt else CUDA_PROVIDER
    if wanted not in available:
        package = (
            "onnxruntime-gpu with TensorRT's libraries" if tensorrt else "onnxruntime-gpu (in place of onnxruntime)"
        )
        raise ConfigError(
            f"engine.devices names {name!r}{' with engine.tensorrt = true' if tensorrt else ''} but this onnxruntime has "
            f"no {wanted} (available: {', '.join(available)}): install {package}"
        )
    return wanted, index


def provider_list(
    provider: str, index: int | None, config: EngineConfig, info: OnnxModelInfo, cache: Path
) -> list[Any]:
    """The providers a session is asked for, first the configured one, with their options."""
    if provider == CPU_PROVIDER:
        return [CPU_PROVIDER]
    cuda = (CUDA_PROVIDER, {"device_id": index or 0})
    if provider == CUDA_PROVIDER:
        return [cuda, CPU_PROVIDER]
    options: dict[str, Any] = {
        "device_id": index or 0,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": config.precision == "float16",
        "trt_int8_enable": info.precision == "int8",
    }
    if config.warm_up_frame_size is not None:
        height, width = config.warm_up_frame_size
        options |= {
            "trt_profile_min_shapes": f"{INPUT_NAME}:1x1x16x16",
            "trt_profile_opt_shapes": f"{INPUT_NAME}:1x1x{height}x{width}",
            "trt_profile_max_shapes": f"{INPUT_NAME}:1x1x{height}x{width}",
        }
    return [(TENSORRT_PROVIDER, options), cuda, CPU_PROVIDER]


def effective_precision(provider: str, config: EngineConfig, info: OnnxModelInfo) -> str:
    if provider == TENSORRT_PROVIDER and config.precision == "float16" and info.precision == "float32":
        return "float16"
    return info.precision


def open_session(path: Path, providers: list[Any], threads: int = 0) -> Any:
    """An ONNX Runtime session with every graph optimisation; ``threads`` intra-op threads (0: ORT's default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=providers)


def build_onnx_engines(config: EngineConfig, key: str = "engine.weights") -> list[OnnxEngine]:
    """The ONNX Runtime workers: one on the CPU, ``workers_per_device`` per CUDA device (one session each);
    ``key`` names the weights in errors (a pipeline's ``net`` step passes its own)."""
    assert config.weights is not None
    try:
        require_onnx()
        info = read_onnx_model(config.weights)
    except WeightsError as exc:
        raise ConfigError(f"{key}: {exc}") from exc
    cache = config.tensorrt_cache or Path(tempfile.gettempdir()) / TENSORRT_CACHE
    engines: list[OnnxEngine] = []
    seen: set[str] = set()
    for name in config.devices:
        provider, index = resolve_provider(name, config.tensorrt)
        device = "cpu" if index is None else f"cuda:{index}"
        if device in seen:
            continue
        seen.add(device)
        if provider == TENSORRT_PROVIDER:
            cache.mkdir(parents=True, exist_ok=True)
        try:
            session = open_session(info.path, provider_list(provider, index, config, info, cache))
        except Exception as exc:  # onnxruntime raises its own classes
            text = f"{type(exc).__name__}: {exc}"
            if index is not None and ("CUDA" in text or "cuda" in text):
                raise DeviceLost(f"{device}: cannot start {provider}: {text}") from exc
            raise ConfigError(f"{key}: ONNX Runtime cannot load {info.path.name}: {text}") from exc
        running = session.get_providers()[0]
        if running != provider:
            raise ConfigError(
                f"engine.devices: ONNX Runtime put {info.path.name} on {running} instead of {provider} "
                f"(the {provider} failed to start; its log says why); refusing to run elsewhere than configured"
            )
        runtime = OrtRuntime(session, device, provider, effective_precision(provider, config, info), info)
        workers = config.workers_per_device if index is not None else 1
        engines += [
            OnnxEngine(
                runtime,
                config.memory_budget_mb,
                config.low_percentile,
                config.high_percentile,
                config.warm_up_frame_size,
            )
            for _ in range(workers)
        ]
        log.info(
            "net_engine_ready",
            device=device,
            backend=BACKEND,
            provider=provider,
            workers=workers,
            precision=runtime.precision,
            quantization=info.quantization,
            illumination_scale=info.spec.illumination_scale,
            weights_sha256=info.sha256,
            source_weights_sha256=info.source_weights_sha256,
            weights_name=info.weights_name,
        )
    return engines


__all__ = [
    "BACKEND",
    "OnnxEngine",
    "OrtRuntime",
    "build_onnx_engines",
    "estimated_peak_bytes",
    "frame_to_unit_input",
    "open_session",
    "provider_list",
    "resolve_provider",
]
