"""The learned engine: the enhancer on a GPU (or the CPU), whole frame by default.

Design of the GPU path, per device:

* one copy of the model, shared by the device's workers, in eval mode, optionally
  channels_last and compiled;
* one **compute stream** and a lock, shared by the device's workers: the forward passes of
  two frames never interleave, so the activations of only one frame are alive and the peak
  memory is that of one frame (the caching allocator reuses the same blocks frame after
  frame because they all belong to that stream);
* per worker, a **copy stream** and a reusable pinned upload buffer; each result is
  downloaded into a pinned block of torch's caching host allocator and handed to the writer
  as it is (no second frame-sized copy): worker A uploads its next frame and downloads its
  last result while worker B's frame computes, which keeps the GPU busy while the daemon
  reads and writes files.

The raw frame goes up as it is (uint16 is half the bytes of float32) and is normalised on
the device with :func:`drdaemon.kernels.window.to_unit`, the function the trainer uses.
Stage times come from CUDA events on the streams, not from CPU clocks; on the CPU the same
code runs with wall-clock marks instead.

Failures: CUDA out of memory and other device errors fail the frame
(:class:`FrameError` with ``Reason.DEVICE_ERROR``); when the device no longer answers a
trivial operation it is gone and :class:`DeviceLost` tells the daemon to exit so the service
manager restarts it. A configured GPU that is missing is an error at start-up: the engine
never moves to the CPU on its own.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from torch import Tensor, nn

from drdaemon.config import ConfigError, EngineConfig
from drdaemon.defaults import (
    HIGH_PERCENTILE,
    LOW_PERCENTILE,
    MEMORY_BUDGET_MB,
    PRECISION,
    SHIPPED_WEIGHTS,
    precision_for_device,
)
from drdaemon.engines.base import Enhanced
from drdaemon.errors import DeviceLost, FrameError, Reason, Stage
from drdaemon.io.trust import UntrustedFile, check_not_writable_by_others
from drdaemon.io.weights import WeightsError, load_weights
from drdaemon.kernels.window import U16_MAX, Window, robust_window, to_unit
from drdaemon.model.network import Enhancer, EnhancerSpec, apply_illumination
from drdaemon.model.tiling import (
    TileSize,
    activation_maps_from_peak,
    cpu_activation_maps,
    head_halo,
    plan_tiles,
    stem_halo,
    tiled_full_illumination,
)

log = structlog.get_logger(__name__)

PRECISIONS: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
#: Side of the square frame the CUDA warm-up measures the activation memory on.
CALIBRATION_SIDE = 1024
#: Tile core the warm-up runs the exact tiler with, so its code path is tried before the first frame.
WARM_UP_TILE = TileSize(40, 32)


class GrayEnhancer(nn.Module):
    """The enhancer applied to a one-channel frame, whatever the weights' ``in_ch``.

    Three-channel weights saw the gray frame replicated (as CLIP saw it in training). A
    convolution of three equal channels is the convolution of one channel with the weights
    summed over the input channels, so the first convolution is folded to one channel here,
    once: the frame is not expanded to three channels on every pass. The division always uses
    the gray frame itself, so the output has one channel.
    """

    def __init__(self, model: Enhancer) -> None:
        super().__init__()
        fold_gray_input(model)
        self.model = model

    def forward(self, gray: Tensor) -> Tensor:
        return apply_illumination(gray, self.model.full_illumination(gray))

    def tiled(self, gray: Tensor, tile: TileSize) -> Tensor:
        return apply_illumination(gray, tiled_full_illumination(self.model, gray, tile))


def fold_gray_input(model: Enhancer) -> None:
    """Sum the first convolution's weights over its input channels (in place): exact for a
    replicated gray input. The spec keeps ``in_ch``, which names the weights, not the layer."""
    first = model.stem[0]
    if not isinstance(first, nn.Conv2d) or first.in_channels == 1:
        return
    with torch.no_grad():
        first.weight = nn.Parameter(first.weight.sum(dim=1, keepdim=True), requires_grad=first.weight.requires_grad)
    first.in_channels = 1


@dataclass
class DeviceRuntime:
    """What the workers of one device share: the model, its compute stream and lock."""

    device: torch.device
    model: GrayEnhancer
    #: The whole-frame pass (compiled per frame size when ``engine.compile`` is on).
    forward: Callable[[Tensor], Tensor]
    compute_stream: torch.cuda.Stream | None
    #: Peak activation maps per input pixel (bytes per pixel per byte of dtype); calibrated
    #: on CUDA in the warm-up.
    activation_maps: float
    #: The exact tiler's pass (its per-tile parts compiled with dynamic shapes when
    #: ``engine.compile`` is on); None: the eager tiler of ``model``.
    tiled: Callable[[Tensor, TileSize], Tensor] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run_tiled(self, gray: Tensor, tile: TileSize) -> Tensor:
        return (self.tiled or self.model.tiled)(gray, tile)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


class PinnedBuffer:
    """A host buffer reused across frames: page-locked on CUDA so copies can be asynchronous."""

    def __init__(self, pinned: bool) -> None:
        self.pinned = pinned
        self._storage = torch.empty(0, dtype=torch.uint8)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """A tensor of ``shape`` and ``dtype`` over the buffer, growing it when needed."""
        nbytes = int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size()
        if self._storage.numel() < nbytes:
            self._storage = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pinned)
        return self._storage[:nbytes].view(dtype).view(shape)


class StageClock:
    """Marks between stages: CUDA events on the given stream, or wall clock on the CPU."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self._marks: dict[str, Any] = {}

    def mark(self, name: str, stream: torch.cuda.Stream | None = None) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(stream)
            self._marks[name] = event
        else:
            self._marks[name] = time.perf_counter()

    def event(self, name: str) -> torch.cuda.Event:
        """The CUDA event of a mark, for another stream to wait on."""
        return self._marks[name]

    def wait(self, name: str) -> None:
        if self.cuda:
            self._marks[name].synchronize()

    def seconds(self, start: str, end: str) -> float:
        a, b = self._marks[start], self._marks[end]
        return a.elapsed_time(b) / 1000.0 if self.cuda else b - a


# torch's uint16 support is thin (few kernels, least of all on CUDA), so 16-bit pixels cross
# the bus as int16 tensors holding the same bits; int16 and int32 work everywhere.


UPLOAD_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.int16): torch.int16, np.dtype(np.float32): torch.float32}


def host_upload_view(frame: np.ndarray) -> np.ndarray:
    """The frame as it is uploaded: uint8 as is, uint16 as int16 bits, anything else as float32."""
    if frame.dtype == np.uint8:
        return frame
    if frame.dtype == np.uint16:
        return frame.view(np.int16)
    return frame.astype(np.float32, copy=False)


def uploaded_to_float(raw: Tensor) -> Tensor:
    """Raw pixel values as float32 on the device (undoing the int16 carrier of uint16 frames)."""
    if raw.dtype == torch.int16:
        return raw.to(torch.int32).bitwise_and_(0xFFFF).to(torch.float32)
    return raw.to(torch.float32)


def unit_to_u16_bits(unit: Tensor) -> Tensor:
    """:func:`drdaemon.kernels.window.unit_to_u16` on the device, as int16 holding the uint16 bits."""
    return (unit.float().clamp(0.0, 1.0) * U16_MAX + 0.5).to(torch.int32).to(torch.int16)


class NetEngine:
    """One worker's view of a device: its own copy stream and pinned buffers."""

    name = "net"

    def __init__(
        self,
        runtime: DeviceRuntime,
        weights_sha256: str,
        precision: str = PRECISION,
        memory_budget_mb: int = MEMORY_BUDGET_MB,
        low_percentile: float = LOW_PERCENTILE,
        high_percentile: float = HIGH_PERCENTILE,
        provenance_sha256: str = "",
        warm_up_shape: tuple[int, int] | None = None,
        weights_name: str = "",
        training_scheme: str | None = None,
    ) -> None:
        #: The precision this engine runs: ``auto`` resolved for its device (the sidecar records it).
        self.precision = precision_for_device(precision, runtime.device.type)
        self.runtime = runtime
        self.device = str(runtime.device)
        self.weights_sha256 = weights_sha256
        self.provenance_sha256 = provenance_sha256
        self.weights_name = weights_name
        self.training_scheme = training_scheme
        self.warm_up_shape = warm_up_shape
        self.memory_budget_mb = memory_budget_mb
        self.low_percentile = low_percentile
        self.high_percentile = high_percentile
        cuda = runtime.is_cuda
        self.copy_stream = torch.cuda.Stream(runtime.device) if cuda else None
        self._host_in = PinnedBuffer(pinned=cuda)

    # -- the Engine interface -------------------------------------------------------------

    def enhance(self, frame: np.ndarray, window: Window | None = None) -> Enhanced:
        if frame.ndim != 2:
            raise FrameError(Stage.ENHANCE, Reason.UNSUPPORTED, f"expected a 2-D frame, got shape {frame.shape}")
        return self._run(frame, self.tile_for(*frame.shape), window)

    def enhance_in_tiles(self, frame: np.ndarray, tile: TileSize, window: Window | None = None) -> Enhanced:
        """The frame through the exact tiler with a given tile size, whatever the budget
        (benchmarks and checks compare it with the whole-frame pass)."""
        return self._run(frame, tile, window)

    def warm_up(self) -> None:
        """Before the daemon is ready: calibrate memory (CUDA), run a small frame whole and in
        tiles, then one frame of the detector's size when it is configured."""
        if self.runtime.is_cuda:
            self._calibrate_memory()
        rng = np.random.default_rng(0)
        frame = rng.integers(0, U16_MAX, (96, 80), dtype=np.uint16)
        self._run(frame, None)
        self._run(frame, WARM_UP_TILE)
        if self.warm_up_shape is not None:
            started = time.perf_counter()
            result = self.enhance(rng.integers(0, U16_MAX, self.warm_up_shape, dtype=np.uint16))
            log.info(
                "net_warmed_up",
                device=self.device,
                frame_size=list(self.warm_up_shape),
                tiled=result.parameters["tiled"],
                seconds=round(time.perf_counter() - started, 3),
            )

    # -- internals ------------------------------------------------------------------------

    @property
    def spec(self) -> EnhancerSpec:
        return self.runtime.model.model.spec

    def tile_for(self, height: int, width: int) -> TileSize | None:
        """The tile size this frame needs under the memory budget, or None to run it whole."""
        model = self.runtime.model.model
        element = torch.empty(0, dtype=PRECISIONS[self.precision]).element_size()
        return plan_tiles(
            height,
            width,
            self.spec.illumination_scale,
            self.memory_budget_mb << 20,
            self.runtime.activation_maps * element,
            stem_halo(model) + head_halo(model),
        )

    def _run(self, frame: np.ndarray, tile: TileSize | None, window: Window | None = None) -> Enhanced:
        """:meth:`_enhance`, with every failure mapped to a frame error or a lost device."""
        try:
            return self._enhance(frame, tile, window)
        except (FrameError, DeviceLost):
            self._settle_copies()
            raise
        except Exception as exc:  # every failure is mapped to a frame or device error
            self._settle_copies()
            raise self._classify(exc) from exc

    def _settle_copies(self) -> None:
        """After a failure, wait for this worker's queued copies: the next frame rewrites the
        pinned upload buffer a queued upload may still be reading. A dead device cannot be
        waited for; its error is the one being raised anyway."""
        if self.copy_stream is None:
            return
        try:
            self.copy_stream.synchronize()
        except Exception as exc:  # noqa: BLE001 - the original failure is what the caller reports
            log.warning("net_copy_stream_unsettled", device=self.device, error=f"{type(exc).__name__}: {exc}")

    def _enhance(self, frame: np.ndarray, tile: TileSize | None, window: Window | None) -> Enhanced:
        runtime = self.runtime
        if window is None:
            window = robust_window(frame, self.low_percentile, self.high_percentile)
        clock = StageClock(runtime.is_cuda)
        upload = host_upload_view(frame)
        host_in = self._host_in.take(frame.shape, UPLOAD_DTYPES[upload.dtype])
        host_in.numpy()[...] = upload

        with self._on(self.copy_stream):
            clock.mark("upload_start", self.copy_stream)
            raw = host_in.to(runtime.device, non_blocking=True)
            clock.mark("upload_end", self.copy_stream)

        with runtime.lock, self._on(runtime.compute_stream):
            if runtime.compute_stream is not None:
                runtime.compute_stream.wait_event(clock.event("upload_end"))
                raw.record_stream(runtime.compute_stream)
            clock.mark("compute_start", runtime.compute_stream)
            enhanced, not_finite = self._compute(raw, window, tile)
            clock.mark("compute_end", runtime.compute_stream)

        # A fresh output block per frame from torch's caching host allocator (pinned on CUDA):
        # the result goes to the writer without another frame-sized copy, and the allocator
        # hands the block out again only after the writer dropped it and its copy has ended.
        host_out = torch.empty(frame.shape, dtype=torch.int16, pin_memory=runtime.is_cuda)
        with self._on(self.copy_stream):
            if self.copy_stream is not None:
                self.copy_stream.wait_event(clock.event("compute_end"))
                enhanced.record_stream(self.copy_stream)
            clock.mark("download_start", self.copy_stream)
            host_out.copy_(enhanced, non_blocking=True)
            clock.mark("download_end", self.copy_stream)
        clock.wait("download_end")
        bad = int(not_finite)  # computed before compute_end, which the download waited for
        if bad:
            raise FrameError(
                Stage.ENHANCE,
                Reason.ENGINE_ERROR,
                f"the network's output is not finite (NaN or infinity) in {bad} of {frame.size} "
                f"pixels ({self.precision} on {self.device}); nothing was written for this frame",
            )
        pixels = host_out.numpy().view(np.uint16)

        return Enhanced(
            pixels=pixels,
            parameters=self._parameters(window, tile),
            timings={
                "upload": clock.seconds("upload_start", "upload_end"),
                "compute": clock.seconds("compute_start", "compute_end"),
                "download": clock.seconds("download_start", "download_end"),
            },
        )

    def _compute(self, raw: Tensor, window: Window, tile: TileSize | None) -> tuple[Tensor, Tensor]:
        """Normalise on the device, run the network, map back to uint16 (still on the device).

        Also returns the count of output pixels that are not finite (a device scalar, read
        after the download): converting NaN to an integer would write black pixels.
        """
        runtime = self.runtime
        gray = to_unit(uploaded_to_float(raw), window)[None, None]
        dtype = PRECISIONS[self.precision]
        with torch.inference_mode(), torch.autocast(runtime.device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = runtime.forward(gray) if tile is None else runtime.run_tiled(gray, tile)
            not_finite = out.numel() - torch.isfinite(out).sum()
        return unit_to_u16_bits(out[0, 0]), not_finite

    def _parameters(self, window: Window, tile: TileSize | None) -> dict[str, Any]:
        spec = self.spec
        return {
            "architecture": spec.architecture,
            "weights_provenance_sha256": self.provenance_sha256,
            "weights_name": self.weights_name,
            "training_scheme": self.training_scheme,
            "in_ch": spec.in_ch,
            "illumination_scale": spec.illumination_scale,
            "precision": self.precision,
            "window": [window.low, window.high],
            "low_percentile": self.low_percentile,
            "high_percentile": self.high_percentile,
            "device": self.device,
            "tiled": tile is not None,
            "tile": None if tile is None else [tile.height, tile.width],
            "memory_budget_mb": self.memory_budget_mb,
        }

    @staticmethod
    def _on(stream: torch.cuda.Stream | None) -> AbstractContextManager[object]:
        return torch.cuda.stream(stream) if stream is not None else nullcontext()

    def _calibrate_memory(self) -> None:
        """Measure the network's peak activation bytes per pixel of a whole-frame pass on this device.

        The first pass lets cuDNN's benchmark mode try its algorithms (their trial workspaces
        would inflate the peak); the second is measured.
        """
        device = self.runtime.device
        side = CALIBRATION_SIDE
        frame = np.zeros((side, side), np.uint16)
        self._run(frame, None)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        self._run(frame, None)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        element = torch.empty(0, dtype=PRECISIONS[self.precision]).element_size()
        self.runtime.activation_maps = activation_maps_from_peak(peak, side, self.spec.illumination_scale, element)
        log.info(
            "net_memory_calibrated",
            device=self.device,
            precision=self.precision,
            frame_bytes_per_pixel=round(peak / (side * side), 1),
            activation_maps=round(self.runtime.activation_maps, 1),
        )

    def _classify(self, exc: Exception) -> Exception:
        """Map an exception from the device to what the daemon does about it."""
        message = f"{type(exc).__name__}: {exc}".strip()
        out_of_memory = (
            isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError))
            or "out of memory" in message
            or "can't allocate memory" in message
        )
        device_error = out_of_memory or _looks_like_device_error(message)
        if self.runtime.is_cuda and device_error:
            if out_of_memory:
                torch.cuda.empty_cache()
            if not self._device_alive():
                return DeviceLost(f"{self.device} stopped answering: {message}")
        if device_error:
            return FrameError(Stage.ENHANCE, Reason.DEVICE_ERROR, f"{self.device}: {message}")
        return FrameError(Stage.ENHANCE, Reason.ENGINE_ERROR, message)

    def _device_alive(self) -> bool:
        """True when the device still runs a trivial kernel (a sticky CUDA error fails this)."""
        if not self.runtime.is_cuda:
            return True
        try:
            probe = torch.ones(1, device=self.runtime.device)
            return float((probe + 1).item()) == 2.0
        except Exception:  # noqa: BLE001 - any failure here means the device is unusable
            return False


def _looks_like_device_error(message: str) -> bool:
    markers = ("CUDA", "cuda", "CUBLAS", "cuDNN", "CUDNN", "AcceleratorError", "device-side", "NCCL")
    return any(marker in message for marker in markers)


# -- building the workers ---------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """A configured device name to a torch device; a configured GPU that is missing raises."""
    if name == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda", 0)
            log.info(
                "net_device_selected",
                device=str(device),
                gpu=torch.cuda.get_device_name(device),
                reason="devices = ['auto'] and CUDA is available",
            )
        else:
            device = torch.device("cpu")
            log.warning(
                "net_device_selected",
                device="cpu",
                reason="devices = ['auto'] and no CUDA device is visible: the learned engine runs on the CPU",
            )
        return device
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"engine.devices: {name!r} is not a device name (use 'auto', 'cpu' or 'cuda:N')") from exc
    if device.type == "cpu":
        log.info("net_device_selected", device="cpu", reason="configured")
        return device
    if device.type != "cuda":
        raise ConfigError(f"engine.devices: {name!r}: only 'cpu' and CUDA devices are supported")
    index = device.index or 0
    if not torch.cuda.is_available():
        raise DeviceLost(
            f"engine.devices names {name!r} but no CUDA device is visible to this process "
            "(driver, CUDA_VISIBLE_DEVICES, container runtime); refusing to run on the CPU instead"
        )
    if index >= torch.cuda.device_count():
        raise DeviceLost(
            f"engine.devices names {name!r} but only {torch.cuda.device_count()} CUDA device(s) "
            "are visible; refusing to run elsewhere"
        )
    device = torch.device("cuda", index)
    log.info("net_device_selected", device=str(device), gpu=torch.cuda.get_device_name(device), reason="configured")
    return device


def configure_cudnn(benchmark: bool) -> None:
    """The learned engine's cuDNN settings (process-wide flags of torch).

    ``float32`` means IEEE float32: torch's default TF32 convolutions would round the
    float32 reference that half precision is compared against. Benchmark mode times cuDNN's
    algorithms on the first frame of each size and keeps the fastest; a line's frames all
    have the same size, so only the first one pays.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = benchmark


def prepare_runtime(
    model: Enhancer,
    device: torch.device,
    channels_last: bool = True,
    compile_model: bool = False,
    cudnn_benchmark: bool = True,
) -> DeviceRuntime:
    """Place a copy of the model on ``device`` and set up what its workers share."""
    if device.type == "cuda":
        configure_cudnn(cudnn_benchmark)
    gray = place_model(model, device, channels_last)
    forward: Callable[[Tensor], Tensor] = gray
    tiled: Callable[[Tensor, TileSize], Tensor] | None = None
    if compile_model:
        forward, tiled = compile_passes(gray)
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    return DeviceRuntime(
        device=device,
        model=gray,
        forward=forward,
        compute_stream=stream,
        activation_maps=cpu_activation_maps(channels_last),
        tiled=tiled,
    )


def place_model(model: Enhancer, device: torch.device, channels_last: bool) -> GrayEnhancer:
    """A copy of ``model`` on ``device``, folded for gray input, in eval mode without gradients."""
    gray = GrayEnhancer(copy.deepcopy(model)).to(device).eval().requires_grad_(False)
    return gray.to(memory_format=torch.channels_last) if channels_last else gray


def compile_passes(gray: GrayEnhancer) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor, TileSize], Tensor]]:
    """``torch.compile`` for the whole-frame pass and the exact tiler.

    Whole frames: static shapes, one compilation per frame size (the region sums and the
    residual blocks' row bands specialise on the shape anyway, so ``dynamic=True`` bought
    nothing); the warm-up compiles the configured detector size before the daemon is ready.
    Tiles: the tiler's Python loop stays eager and its per-tile parts (stem, body layers,
    head) are compiled with dynamic shapes, on a copy of the model (the model is tiny) so no
    compiled region nests in the whole-frame one. A size beyond torch's recompile limit runs
    eagerly, with the same pixels.
    """
    tiler = copy.deepcopy(gray)
    for part in (tiler.model.stem, *tiler.model.body, tiler.model.head):
        part.compile(dynamic=True)
    return torch.compile(gray, dynamic=False), tiler.tiled


def build_net_engines(config: EngineConfig, key: str = "engine.weights") -> list[NetEngine]:
    """The learned engine's workers: ``workers_per_device`` per configured CUDA device, one on the CPU.

    On the CPU a second worker would only compete for the same cores (torch already uses all
    of them inside one forward pass), so the CPU gets one. ``key`` names the weights in errors
    (a pipeline's ``net`` step passes its own).
    """
    path = config.weights if config.weights is not None else SHIPPED_WEIGHTS
    try:
        if Path(path).is_file():
            check_not_writable_by_others(Path(path), key)
        loaded = load_weights(path, allow_pickle=config.allow_pickle)
    except UntrustedFile as exc:
        raise ConfigError(f"{key}: {exc}") from exc
    except WeightsError as exc:
        where = "" if config.weights is not None else " (unset: the shipped weights; reinstall the package)"
        raise ConfigError(f"{key}{where}: {exc}") from exc
    if config.compile and config.warm_up_frame_size is None:
        log.warning(
            "net_compile_without_warm_up_size",
            note="engine.compile compiles once per frame size; without engine.warm_up_frame_size the "
            "first real frame pays the compilation, which may outlast the service's WatchdogSec",
        )
    devices: list[torch.device] = []
    for name in config.devices:
        device = resolve_device(name)
        if device not in devices:
            devices.append(device)
    engines: list[NetEngine] = []
    for device in devices:
        precision = precision_for_device(config.precision, device.type)
        if device.type == "cpu" and precision == "float16":
            log.warning(
                "net_precision_on_cpu",
                precision="float16",
                note="float16 is about 3 times slower than bfloat16 on a CPU; engine.precision = "
                '"auto" (the default) picks bfloat16 there',
            )
        runtime = prepare_runtime(loaded.model, device, config.channels_last, config.compile, config.cudnn_benchmark)
        workers = config.workers_per_device if device.type == "cuda" else 1
        engines += [
            NetEngine(
                runtime,
                loaded.sha256,
                precision,
                config.memory_budget_mb,
                config.low_percentile,
                config.high_percentile,
                loaded.provenance_sha256,
                config.warm_up_frame_size,
                loaded.name,
                loaded.training_scheme,
            )
            for _ in range(workers)
        ]
        log.info(
            "net_engine_ready",
            device=str(device),
            workers=workers,
            precision=precision,
            precision_setting=config.precision,
            illumination_scale=loaded.model.spec.illumination_scale,
            in_ch=loaded.model.spec.in_ch,
            weights_sha256=loaded.sha256,
            weights_name=loaded.name,
            compiled=config.compile,
        )
    return engines


__all__ = [
    "GrayEnhancer",
    "NetEngine",
    "build_net_engines",
    "fold_gray_input",
    "host_upload_view",
    "prepare_runtime",
    "resolve_device",
    "unit_to_u16_bits",
    "uploaded_to_float",
]
