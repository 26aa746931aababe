"""The daemon's host cost per frame, stage by stage: what the CPU spends around the engine.

The GPU targets (>= 25 frames/s end to end) hold only if the host keeps up: every frame is
read, hashed, windowed, copied to and from the engine's staging buffers, encoded, written,
fsynced and given a sidecar, on the reader, worker and writer threads. This module times
those steps with the daemon's own functions on one frame, so ``drdaemon bench --engine
identity`` can print where the milliseconds go and what frame rate the thread counts allow.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drdaemon.bench.timing import median_seconds
from drdaemon.io.durable import atomic_write, fsync_directory
from drdaemon.io.formats import output_format
from drdaemon.io.limits import ReadLimits
from drdaemon.io.readers import read_frame_bytes
from drdaemon.io.sidecar import EngineRecord, SidecarDraft, software_record
from drdaemon.kernels.window import robust_window

#: Host time per frame and per thread the GPU targets need: 25 frames/s on one lane of each kind.
LANE_BUDGET_S = 0.040

#: Which thread pays each stage in the daemon (see :mod:`drdaemon.service.daemon`).
STAGE_THREAD = {
    "read": "reader",
    "hash input": "reader",
    "window": "reader",
    "copies": "worker",
    "encode": "writer",
    "hash output": "writer",
    "write": "writer",
    "fsync": "writer",
    "sidecar": "writer",
}


@dataclass(frozen=True)
class HostCosts:
    """Median seconds per frame of each host stage, in pipeline order."""

    stages: dict[str, float]

    def by_thread(self) -> dict[str, float]:
        totals = dict.fromkeys(("reader", "worker", "writer"), 0.0)
        for stage, seconds in self.stages.items():
            totals[STAGE_THREAD[stage]] += seconds
        return totals

    @property
    def total(self) -> float:
        return sum(self.stages.values())

    def frame_rate_ceiling(self, readers: int, workers: int, writers: int) -> float:
        """Frames per second the host allows with these thread counts, the engine taking no time."""
        threads = {"reader": readers, "worker": workers, "writer": writers}
        return min(threads[kind] / seconds for kind, seconds in self.by_thread().items() if seconds > 0)


def _write_unsynced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(path.parent)


def measure_host_costs(frame: np.ndarray, compression: str, repeats: int = 5) -> HostCosts:
    """Time each host stage of one frame (uint16) with the daemon's functions, in a scratch folder.

    ``copies`` is the frame-sized copy the learned engine makes on the host (into its pinned
    upload buffer; the result is downloaded into memory the writer takes as it is); ``fsync`` is the
    output file's and its folder's; ``sidecar`` builds the record and writes it durably.
    """
    import tifffile

    output = output_format("tiff", compression)
    with tempfile.TemporaryDirectory(prefix="drdaemon-host-") as tmp:
        root = Path(tmp)
        source = root / "frame.tif"
        tifffile.imwrite(source, frame, photometric="minisblack")
        limits = ReadLimits(max_pixels=frame.size * 2, max_bytes=source.stat().st_size * 2)
        decoded, data = read_frame_bytes(source, limits)
        pixels = decoded.pixels
        staging = np.empty_like(pixels)
        encoded = output.encode(pixels, decoded.tags)
        target = root / "out.tif"
        draft = SidecarDraft(
            original_path=str(source),
            input_sha256=hashlib.sha256(data).hexdigest(),
            input_bytes=len(data),
            input_shape=list(pixels.shape),
            input_dtype=str(pixels.dtype),
            engine=EngineRecord(name="identity", parameters={}, weights_sha256=None),
            software=software_record("cpu"),
            started_wall=time.time(),
            timings={},
            engine_timings={},
        )
        counter = iter(range(1 << 30))

        def write_sidecar() -> None:
            record = draft.complete(
                input_path=str(source),
                output_path=str(target),
                data=encoded,
                shape=list(pixels.shape),
                dtype=str(pixels.dtype),
                compression=output.compression,
                preview=None,
                write_s=0.0,
            )
            atomic_write(root / f"sidecar-{next(counter)}.json", record.to_bytes())

        def copies() -> None:
            np.copyto(staging, pixels)

        def write_and_fsync() -> None:
            _write_unsynced(target, encoded)
            _fsync_file(target)

        _write_unsynced(target, encoded)
        stages = {
            "read": median_seconds(lambda: read_frame_bytes(source, limits), repeats),
            "hash input": median_seconds(lambda: hashlib.sha256(data).hexdigest(), repeats),
            "window": median_seconds(lambda: robust_window(pixels), repeats),
            "copies": median_seconds(copies, repeats),
            "encode": median_seconds(lambda: output.encode(pixels, decoded.tags), repeats),
            "hash output": median_seconds(lambda: hashlib.sha256(encoded).hexdigest(), repeats),
            "write": median_seconds(lambda: _write_unsynced(target, encoded), repeats),
            "fsync": median_seconds(write_and_fsync, repeats),
            "sidecar": median_seconds(write_sidecar, repeats),
        }
        # The fsync case rewrote the file first (an fsync of clean pages costs nothing): take the write off.
        stages["fsync"] = max(0.0, stages["fsync"] - stages["write"])
        # The sidecar records the output's hash, already counted as its own stage.
        stages["sidecar"] = max(0.0, stages["sidecar"] - stages["hash output"])
    return HostCosts(stages)


def host_cost_lines(costs: HostCosts, readers: int, workers: int, writers: int) -> list[str]:
    """The breakdown as printed by the benchmark, with the frame rate the thread counts allow."""
    lines = [
        "host cost per frame, median (ms): "
        + ", ".join(f"{stage} {seconds * 1e3:.1f}" for stage, seconds in costs.stages.items())
        + f"; total {costs.total * 1e3:.1f}"
    ]
    threads = {"reader": readers, "worker": workers, "writer": writers}
    parts = []
    for kind, seconds in costs.by_thread().items():
        per_lane = seconds / threads[kind]
        verdict = "ok" if per_lane <= LANE_BUDGET_S else "over"
        parts.append(f"{kind}s {seconds * 1e3:.1f} ms / {threads[kind]} = {per_lane * 1e3:.1f} ms per lane ({verdict})")
    lines.append("  by thread: " + "; ".join(parts) + f"; budget {LANE_BUDGET_S * 1e3:.0f} ms per lane")
    lines.append(
        f"  host ceiling with {readers} reader(s), {workers} worker(s), {writers} writer(s): "
        f"{costs.frame_rate_ceiling(readers, workers, writers):.1f} frames/s (engine time not counted; "
        "threads share the cores, so more threads than cores do not add up)"
    )
    return lines


__all__ = ["LANE_BUDGET_S", "STAGE_THREAD", "HostCosts", "host_cost_lines", "measure_host_costs"]
