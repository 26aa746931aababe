"""One frame's journey, step by step: read, enhance, write and record, or fail with a reason.

The daemon runs these steps on different threads (so that one frame is read while another
is enhanced and a third written); ``drdaemon enhance`` runs them one after another. Each
step measures itself; the timings end up in the sidecar, the log and the metrics.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog

from drdaemon.engines.base import Engine, Enhanced
from drdaemon.errors import DeviceLost, FrameError, Reason, Stage
from drdaemon.io.readers import Frame, ReadLimits, read_frame_bytes
from drdaemon.io.sidecar import (
    EngineRecord,
    InputRecord,
    OutputRecord,
    Sidecar,
    software_record,
    utc_iso,
)
from drdaemon.folders.claim import WorkItem
from drdaemon.folders.commit import Finisher, Plan

log = structlog.get_logger(__name__)


@dataclass
class LoadedFrame:
    """A frame read from disk, with the hash of exactly the bytes that were decoded."""

    item: WorkItem
    frame: Frame
    sha256: str
    nbytes: int
    started_wall: float
    read_s: float


@dataclass
class EnhancedFrame:
    loaded: LoadedFrame
    result: Enhanced
    engine_name: str
    device: str
    weights_sha256: str | None
    enhance_s: float


@dataclass
class CommittedFrame:
    """What a successful frame left behind, for the log and the metrics."""

    sidecar: Sidecar
    output: Path
    write_s: float
    sidecar_s: float
    stage_timings: dict[str, float] = field(default_factory=dict)  # metric stage -> seconds


def load_frame(item: WorkItem, limits: ReadLimits) -> LoadedFrame:
    """Read the claimed file once, hash those bytes, decode them; raises :class:`FrameError`."""
    started_wall = time.time()
    start = time.perf_counter()
    frame, data = read_frame_bytes(item.path, limits)
    digest = hashlib.sha256(data).hexdigest()
    return LoadedFrame(item, frame, digest, len(data), started_wall, time.perf_counter() - start)


def enhance_frame(loaded: LoadedFrame, engine: Engine) -> EnhancedFrame:
    """Run the engine; anything it raises except :class:`DeviceLost` becomes a :class:`FrameError`."""
    start = time.perf_counter()
    try:
        result = engine.enhance(loaded.frame.pixels)
    except (FrameError, DeviceLost):
        raise
    except Exception as exc:
        raise FrameError(Stage.ENHANCE, Reason.ENGINE_ERROR, f"{type(exc).__name__}: {exc}") from exc
    elapsed = time.perf_counter() - start
    pixels = result.pixels
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint16 or pixels.shape != loaded.frame.shape:
        got = (getattr(pixels, "dtype", type(pixels).__name__), getattr(pixels, "shape", None))
        raise FrameError(Stage.ENHANCE, Reason.ENGINE_ERROR,
                         f"engine {engine.name} returned {got}, expected uint16 {loaded.frame.shape}")
    return EnhancedFrame(loaded, result, engine.name, engine.device, engine.weights_sha256, elapsed)


def engine_stage_timings(done: EnhancedFrame) -> dict[str, float]:
    """The enhance time split as the metrics want it: the engine's own sub-stages, else all compute."""
    own = {k: v for k, v in done.result.timings.items() if k in ("upload", "compute", "download")}
    return own or {"compute": done.enhance_s}


def commit_frame(done: EnhancedFrame, finisher: Finisher, *, retire_input: bool = True) -> CommittedFrame:
    """Write output, preview and sidecar under their planned names, then archive the raw frame.

    With ``retire_input=False`` (``drdaemon enhance``) no plan file is written and the input
    stays where it is. Raises :class:`FrameError` (stage write) when the outbox refuses.
    """
    loaded = done.loaded
    item = loaded.item
    plan = finisher.plan_success(item.path, item.original.name, write_plan=retire_input)
    try:
        start = time.perf_counter()
        output_format = finisher.output_format
        data = output_format.encode(done.result.pixels, loaded.frame.tags)
        output_sha = hashlib.sha256(data).hexdigest()
        preview = output_format.preview(done.result.pixels) if plan.preview is not None else None
        finisher.write_output(plan, data, preview)
        write_s = time.perf_counter() - start
    except (OSError, ValueError) as exc:
        finisher.release(plan)
        raise FrameError(Stage.WRITE, Reason.WRITE_ERROR, f"{type(exc).__name__}: {exc}") from exc
    try:
        start = time.perf_counter()
        sidecar = _sidecar(done, plan, data, output_sha, output_format.compression, write_s)
        finisher.write_sidecar(plan, sidecar.to_bytes())
        sidecar_s = time.perf_counter() - start
    except (OSError, ValueError) as exc:
        finisher.undo_output(plan)  # an output without its sidecar must not stay
        finisher.release(plan)
        raise FrameError(Stage.WRITE, Reason.WRITE_ERROR, f"{type(exc).__name__}: {exc}") from exc
    if retire_input:
        try:
            finisher.retire_input(item.path, plan)
        except OSError as exc:
            # The result is committed; the next start sees the sidecar and finishes the move.
            log.error("archive_move_failed", frame=item.original.name, error=str(exc),
                      note="raw frame stays in work/ until the next start")
    else:
        finisher.release(plan)
    stages = {"wait": item.wait_s, "read": loaded.read_s, **engine_stage_timings(done),
              "write": write_s, "sidecar": sidecar_s}
    return CommittedFrame(sidecar, Path(plan.output), write_s, sidecar_s, stages)


def _sidecar(
    done: EnhancedFrame, plan: Plan, data: bytes, output_sha: str, compression: str, write_s: float
) -> Sidecar:
    loaded = done.loaded
    pixels = done.result.pixels
    timings = {"wait": loaded.item.wait_s, "read": loaded.read_s, "enhance": done.enhance_s, "write": write_s}
    timings |= {k: float(v) for k, v in done.result.timings.items() if k not in timings}
    return Sidecar(
        input=InputRecord(
            path=str(plan.archive or loaded.item.original),
            original_path=str(loaded.item.original),
            sha256=loaded.sha256,
            bytes=loaded.nbytes,
            shape=list(loaded.frame.shape),
            dtype=str(loaded.frame.pixels.dtype),
        ),
        output=OutputRecord(
            path=str(plan.output),
            sha256=output_sha,
            bytes=len(data),
            shape=list(pixels.shape),
            dtype=str(pixels.dtype),
            compression=compression,
            preview=plan.preview,
        ),
        engine=EngineRecord(
            name=done.engine_name, parameters=done.result.parameters, weights_sha256=done.weights_sha256
        ),
        software=software_record(done.device),
        timings={k: round(v, 6) for k, v in timings.items()},
        started_utc=utc_iso(loaded.started_wall),
        finished_utc=utc_iso(time.time()),
    )


def fail_frame(item: WorkItem, error: FrameError, finisher: Finisher) -> Path:
    """Move a frame that cannot be enhanced to ``failed/`` beside ``<name>.reason.json``."""
    plan = finisher.plan_failure(item.path, item.original.name)
    cause = error.__cause__ if error.__cause__ is not None else error
    reason = {
        "stage": error.stage.value,
        "reason": error.reason.value,
        "error_class": type(cause).__name__,
        "message": str(error),
        "input": str(item.original),
        "failed_utc": utc_iso(time.time()),
    }
    finisher.write_reason(plan, (json.dumps(reason, indent=2) + "\n").encode("utf-8"))
    finisher.retire_input(item.path, plan)
    return Path(plan.failed)


def unexpected_error(stage: Stage, exc: BaseException) -> FrameError:
    """Wrap an exception nobody anticipated, keeping its class for the reason file."""
    reason = Reason.WRITE_ERROR if stage is Stage.WRITE else (
        Reason.ENGINE_ERROR if stage is Stage.ENHANCE else Reason.UNREADABLE)
    error = FrameError(stage, reason, f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


__all__ = [
    "CommittedFrame",
    "EnhancedFrame",
    "LoadedFrame",
    "commit_frame",
    "engine_stage_timings",
    "enhance_frame",
    "fail_frame",
    "load_frame",
    "unexpected_error",
]
