"""One frame's journey, step by step: read, enhance, write and record, or fail with a reason.

The daemon runs these steps on different threads (so that one frame is read while another
is enhanced and a third written); ``drdaemon enhance`` runs them one after another. Each
step measures itself; the timings end up in the sidecar, the log and the metrics. Writing
and recording is one call, :func:`commit_frame`, into :mod:`drdaemon.folders.commit`,
which owns the whole commit protocol.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from drdaemon.config import InputConfig
from drdaemon.engines.base import Engine, Enhanced
from drdaemon.errors import DeviceLost, FrameError, Reason, Stage
from drdaemon.folders.claim import WorkItem
from drdaemon.folders.commit import (
    Committed,
    Finisher,
    FrameChanged,
    FrameOutput,
    commit_output,
    display_name,
    file_signature,
    name_hex,
)
from drdaemon.io.dicom_writer import Derivation
from drdaemon.io.formats import DicomOutput, format_for_frame
from drdaemon.io.limits import RawLayout, ReadLimits
from drdaemon.io.readers import FRAME_FORMATS, Frame, ReaderRegistry, read_frame_file
from drdaemon.io.sidecar import EngineRecord, SidecarDraft, dicom_record, raw_record, software_record
from drdaemon.kernels.window import Window, robust_window


@dataclass
class LoadedFrame:
    """A frame read from disk, with the hash of exactly the bytes that were decoded."""

    item: WorkItem
    frame: Frame
    sha256: str
    nbytes: int
    started_wall: float
    read_s: float
    #: The percentile window, measured by the reader (None: the engine measures it).
    window: Window | None = None
    window_s: float = 0.0
    #: (inode, size, mtime_ns) when read: the commit refuses a frame that changed since.
    signature: tuple[int, int, int] | None = None


@dataclass
class EnhancedFrame:
    loaded: LoadedFrame
    result: Enhanced
    engine_name: str
    device: str
    weights_sha256: str | None
    enhance_s: float


def read_limits(config: InputConfig) -> ReadLimits:
    """The reader's size limits and ``.raw`` layout from the ``[input]`` table."""
    raw = config.raw
    layout = None if raw is None else RawLayout(raw.width, raw.height, raw.dtype, raw.byte_order, raw.header_bytes)
    return ReadLimits(
        max_pixels=config.max_pixels,
        max_bytes=config.max_bytes,
        raw=layout,
        max_decoded_bytes=config.max_decoded_bytes,
    )


def load_frame(
    item: WorkItem,
    limits: ReadLimits,
    percentiles: tuple[float, float] | None = None,
    formats: ReaderRegistry = FRAME_FORMATS,
) -> LoadedFrame:
    """Read the claimed file once, hash those bytes, decode them by their format in ``formats``;
    raises :class:`FrameError`.

    With ``percentiles`` also measure the frame's window (:func:`robust_window`) here, on the
    reader's thread, so the engine's worker does not.
    """
    started_wall = time.time()
    start = time.perf_counter()
    frame, data, status = read_frame_file(item.path, limits, formats)
    signature = (status.st_ino, status.st_size, status.st_mtime_ns)
    if file_signature(item.path) != signature or len(data) != status.st_size:
        raise FrameChanged(f"{item.path.name} changed while it was read")
    if item.claimed_signature is not None and item.claimed_signature != signature:
        # A writer still at work after the watcher judged the file whole: read it again once it settles.
        raise FrameChanged(
            f"{item.path.name} changed between its claim and its read "
            f"(inode, size, mtime {item.claimed_signature} -> {signature})"
        )
    digest = hashlib.sha256(data).hexdigest()
    read_s = time.perf_counter() - start
    window, window_s = None, 0.0
    if percentiles is not None:
        window = robust_window(frame.pixels, *percentiles)
        window_s = time.perf_counter() - start - read_s
    return LoadedFrame(item, frame, digest, len(data), started_wall, read_s, window, window_s, signature)


def enhance_frame(loaded: LoadedFrame, engine: Engine) -> EnhancedFrame:
    """Run the engine; anything it raises except :class:`DeviceLost` becomes a :class:`FrameError`."""
    start = time.perf_counter()
    try:
        result = engine.enhance(loaded.frame.pixels, loaded.window)
    except (FrameError, DeviceLost):
        raise
    except Exception as exc:
        raise FrameError(Stage.ENHANCE, Reason.ENGINE_ERROR, f"{type(exc).__name__}: {exc}") from exc
    elapsed = time.perf_counter() - start
    pixels = result.pixels
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint16 or pixels.shape != loaded.frame.shape:
        got = (getattr(pixels, "dtype", type(pixels).__name__), getattr(pixels, "shape", None))
        raise FrameError(
            Stage.ENHANCE,
            Reason.ENGINE_ERROR,
            f"engine {engine.name} returned {got}, expected uint16 {loaded.frame.shape}",
        )
    return EnhancedFrame(loaded, result, engine.name, engine.device, engine.weights_sha256, elapsed)


#: Sub-stages of ``enhance`` an engine may measure itself (the learned engine does).
ENGINE_SUB_STAGES = ("upload", "compute", "download")


def sidecar_draft(done: EnhancedFrame) -> SidecarDraft:
    """Everything the sidecar says about the frame's input, engine and stages so far."""
    loaded = done.loaded
    original = str(loaded.item.original)
    return SidecarDraft(
        original_path=display_name(original),
        original_path_hex=name_hex(original),
        input_sha256=loaded.sha256,
        input_bytes=loaded.nbytes,
        input_shape=list(loaded.frame.shape),
        input_dtype=str(loaded.frame.pixels.dtype),
        engine=EngineRecord(
            name=done.engine_name, parameters=done.result.parameters, weights_sha256=done.weights_sha256
        ),
        software=software_record(done.device),
        started_wall=loaded.started_wall,
        timings={
            "wait": loaded.item.wait_s,
            "read": loaded.read_s,
            "window": loaded.window_s,
            "enhance": done.enhance_s,
        },
        engine_timings=dict(done.result.timings),
        input_format=loaded.frame.format,
        input_dicom=dicom_record(loaded.frame.dicom),
        input_raw=raw_record(loaded.frame.raw),
    )


def derivation(done: EnhancedFrame) -> Derivation:
    """The engine identity a derived (DICOM) output records."""
    return Derivation(done.engine_name, dict(done.result.parameters), done.weights_sha256)


def commit_frame(done: EnhancedFrame, finisher: Finisher, *, retire_input: bool = True) -> Committed:
    """Hand the enhanced frame, in the format chosen for it, to the commit
    (:func:`drdaemon.folders.commit.commit_output`)."""
    frame = done.loaded.frame
    output_format = format_for_frame(finisher.output_format, frame, derivation(done))
    draft = sidecar_draft(done)
    if isinstance(output_format, DicomOutput):
        draft.output_dicom = dicom_record(output_format.identity)
    result = FrameOutput(done.result.pixels, frame.tags, draft, output_format, done.loaded.signature)
    return commit_output(done.loaded.item, result, finisher, retire_input=retire_input)


def stage_timings(done: EnhancedFrame, committed: Committed) -> dict[str, float]:
    """Seconds per metric stage of a committed frame, under the sidecar's ``timings`` names.

    ``window`` only where the reader measured it, the engine's sub-stages only where it has them.
    """
    loaded = done.loaded
    window = {"window": loaded.window_s} if loaded.window is not None else {}
    own = {k: v for k, v in done.result.timings.items() if k in ENGINE_SUB_STAGES}
    return {
        "wait": loaded.item.wait_s,
        "read": loaded.read_s,
        **window,
        "enhance": done.enhance_s,
        **own,
        "write": committed.write_s,
        "sidecar": committed.sidecar_s,
    }


def as_frame_error(stage: Stage, exc: Exception) -> FrameError:
    """``exc`` as the failure of a frame: a :class:`FrameError` as it is, anything nobody
    anticipated wrapped for ``stage``, keeping its class for the reason file."""
    if isinstance(exc, FrameError):
        return exc
    reason = (
        Reason.WRITE_ERROR
        if stage is Stage.WRITE
        else (Reason.ENGINE_ERROR if stage is Stage.ENHANCE else Reason.UNREADABLE)
    )
    error = FrameError(stage, reason, f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


__all__ = [
    "ENGINE_SUB_STAGES",
    "EnhancedFrame",
    "LoadedFrame",
    "as_frame_error",
    "commit_frame",
    "enhance_frame",
    "load_frame",
    "read_limits",
    "sidecar_draft",
    "stage_timings",
]
