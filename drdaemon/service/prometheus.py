"""Prometheus metrics of the daemon: one prefix, base units, no per-file labels.

Every label value is created at start-up so that each series exists at zero before the
first frame: an alert such as ``rate(drdaemon_frames_total{result="failed"}[5m])`` then
has data to evaluate instead of silence. The metrics live in their own registry (not the
process-wide default one) so that tests and several daemons in one process never collide;
that registry leaves out prometheus_client's ``_created`` series (:class:`ScrapeRegistry`).
Stage labels are the sidecar's ``timings`` keys, and no label is ever empty.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from enum import Enum
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from drdaemon.errors import Reason, Stage

#: The stages a frame passes through, in order; ``drdaemon_stage_duration_seconds{stage}``.
#: The same words as the sidecar's ``timings``: ``enhance`` is the whole engine call of every
#: engine, and ``upload``, ``compute`` and ``download`` its sub-stages where the engine measures
#: them (the learned engine; the classical engine has none).
STAGES: Final = ("wait", "read", "window", "enhance", "upload", "compute", "download", "write", "sidecar")

#: Histogram buckets from 5 ms (one small frame's stage) to 60 s (a stalled network share);
#: 2 s is the station's takt, so it is a bucket edge and the latency alert is exact.
BUCKETS_S: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip

#: Which reasons a stage can produce; these combinations are pre-created at zero.
_EXPECTED_ERRORS: Final = {
    Stage.READ.value: (
        Reason.UNREADABLE, Reason.TRUNCATED, Reason.UNSUPPORTED, Reason.TOO_LARGE, Reason.EMPTY,
        Reason.CHANGED,
    ),
    Stage.ENHANCE.value: (Reason.ENGINE_ERROR, Reason.DEVICE_ERROR),
    Stage.WRITE.value: (Reason.WRITE_ERROR,),
}  # fmt: skip

#: Stages accepted in an error label: the coarse failure stages of ``drdaemon.errors.Stage``
#: plus the fine timing stages, so a failure can be pinned to e.g. ``upload``.
ERROR_STAGES: Final = tuple(dict.fromkeys([s.value for s in Stage] + list(STAGES)))
REASONS: Final = tuple(r.value for r in Reason)
#: Why the output side refuses writes (``drdaemon_output_blocked{reason}``), see
#: :mod:`drdaemon.service.output`.
OUTPUT_BLOCKED_REASONS: Final = (
    "disk_full",
    "read_only",
    "permission",
    "missing",
    "io_error",
    "low_space",
    "unmounted",
)
#: The folders whose filesystem's free space is exported (``drdaemon_folder_free_bytes{folder}``).
FOLDERS: Final = ("inbox", "outbox", "archive", "failed", "work")
#: ``drdaemon_retention_pruned_frames_total{policy}`` and ``..._pruned_bytes_total{folder}``, as in
#: :mod:`drdaemon.folders.retention` (not imported here: the metrics stay free of folder logic).
RETENTION_POLICIES: Final = ("max_age", "max_size", "min_free")
RETENTION_FOLDERS: Final = ("archive", "outbox")
#: Why the daemon stopped with exit status 70 (:mod:`drdaemon.exits`).
FATAL_CAUSES: Final = ("device_lost", "internal_error")

#: Characters of the weights' sha256 shown in the build-info label: enough to tell two
#: weight files apart on a dashboard, short enough to read.
WEIGHTS_SHA_PREFIX: Final = 12
#: The build-info label value for what does not apply (no weights, no CUDA): Prometheus
#: treats an empty label value as no label at all, so a query by it would find nothing.
NOT_APPLICABLE: Final = "none"


class ScrapeRegistry(CollectorRegistry):
    """A registry whose scrape leaves out the ``<name>_created`` samples of counters and histograms.

    prometheus_client adds, beside every counter and histogram series, one ``_created`` series
    holding the Unix time it was made: ``drdaemon_frames_created`` reads like a metric and
    doubles the series count. ``prometheus_client.disable_created_metrics()`` would turn them
    off for every registry of the process; filtering here keeps the choice to this daemon's.
    """

    def collect(self) -> Iterator[Metric]:
        for family in super().collect():
            created = family.name + "_created"
            if not any(sample.name == created for sample in family.samples):
                yield family
                continue
            trimmed = Metric(family.name, family.documentation, family.type, family.unit)
            trimmed.samples = [sample for sample in family.samples if sample.name != created]
            yield trimmed


def _label(value: str | Enum, allowed: tuple[str, ...], what: str) -> str:
    text = value.value if isinstance(value, Enum) else str(value)
    if text not in allowed:
        # Labels are a fixed vocabulary; an unknown one is a programming error, not data.
        raise ValueError(f"unknown {what} {text!r}; expected one of {', '.join(allowed)}")
    return text


class DaemonMetrics:
    """All metrics one daemon exports, and the HTTP endpoint that serves them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else ScrapeRegistry()
        reg = self.registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

        self.frames = Counter("drdaemon_frames", "Frames finished, by result.", ["result"], registry=reg)
        self.errors = Counter(
            "drdaemon_errors",
            "Frames that failed, by the stage that failed and a fixed reason.",
            ["stage", "reason"],
            registry=reg,
        )
        self.pixels = Counter("drdaemon_pixels", "Pixels of successfully enhanced frames.", registry=reg)
        self.stage_duration = Histogram(
            "drdaemon_stage_duration_seconds",
            "Time a frame spends in each stage.",
            ["stage"],
            buckets=BUCKETS_S,
            registry=reg,
        )
        self.latency = Histogram(
            "drdaemon_frame_latency_seconds",
            "End-to-end time from a frame's arrival in the inbox to its finished sidecar.",
            buckets=BUCKETS_S,
            registry=reg,
        )
        self.last_success = Gauge(
            "drdaemon_last_success_timestamp_seconds",
            "Unix time of the last frame enhanced successfully (0 before the first).",
            registry=reg,
        )
        self.inbox_depth = Gauge("drdaemon_inbox_frames", "Candidate frames waiting in the inbox.", registry=reg)
        self.inbox_unmatched = Gauge(
            "drdaemon_inbox_unmatched_files",
            "Files in the inbox that no watch.patterns pattern takes: never processed (each is named in the log).",
            registry=reg,
        )
        self.queue_depth = Gauge("drdaemon_queue_frames", "Frames claimed and queued for the engine.", registry=reg)
        self.in_flight = Gauge("drdaemon_frames_in_flight", "Frames being enhanced right now.", registry=reg)
        self.watcher_up = Gauge("drdaemon_watcher_up", "1 while the inbox watcher is alive, else 0.", registry=reg)
        self.claim_refusals = Counter(
            "drdaemon_claim_refusals",
            "Claims of inbox files the filesystem refused (an immutable file, one a share keeps locked).",
            registry=reg,
        )
        self.inbox_unclaimable = Gauge(
            "drdaemon_inbox_unclaimable_frames",
            "Inbox files whose claim was refused, waiting for a retry with backoff (the others go on).",
            registry=reg,
        )
        self.device_memory_in_use = Gauge(
            "drdaemon_device_memory_in_use_bytes",
            "Accelerator memory held by live tensors.",
            ["device"],
            registry=reg,
        )
        self.device_memory_reserved = Gauge(
            "drdaemon_device_memory_reserved_bytes",
            "Accelerator memory reserved by the allocator's cache.",
            ["device"],
            registry=reg,
        )
        self.fatal_errors = Counter(
            "drdaemon_fatal_errors",
            "Errors that stopped the daemon (exit 70), by cause: device_lost or internal_error.",
            ["cause"],
            registry=reg,
        )
        self.build_info = Gauge(
            "drdaemon_build_info",
            "Always 1; the labels say which software, engine and weights are running.",
            ["version", "engine", "weights_sha256", "torch", "cuda"],
            registry=reg,
        )
        self.output_blocked = Gauge(
            "drdaemon_output_blocked",
            "1 while frames cannot be committed for this reason (the daemon holds them and retries), else 0.",
            ["reason"],
            registry=reg,
        )
        self.folder_free = Gauge(
            "drdaemon_folder_free_bytes",
            "Bytes free (available to the daemon) on the filesystem of each folder.",
            ["folder"],
            registry=reg,
        )
        self.pruned_frames = Counter(
            "drdaemon_retention_pruned_frames",
            "Finished frames pruned by retention, by the limit that asked for them.",
            ["policy"],
            registry=reg,
        )
        self.pruned_bytes = Counter(
            "drdaemon_retention_pruned_bytes",
            "Bytes retention removed, by folder.",
            ["folder"],
            registry=reg,
        )
        self.retention_behind = Gauge(
            "drdaemon_retention_behind",
            "1 when the last pruning pass left a retention limit unmet (frames held or too few to prune), else 0.",
            registry=reg,
        )
        self.retention_last_pass = Gauge(
            "drdaemon_retention_last_pass_timestamp_seconds",
            "Unix time of the last pruning pass (0: retention off or no pass yet).",
            registry=reg,
        )
        # Resident memory, CPU time and open files of the daemon process itself.
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)

        for cause in FATAL_CAUSES:
            self.fatal_errors.labels(cause=cause)
        for blocked in OUTPUT_BLOCKED_REASONS:
            self.output_blocked.labels(reason=blocked)
        for result in ("ok", "failed"):
            self.frames.labels(result=result)
        for folder in FOLDERS:
            self.folder_free.labels(folder=folder)
        for policy in RETENTION_POLICIES:
            self.pruned_frames.labels(policy=policy)
        for folder in RETENTION_FOLDERS:
            self.pruned_bytes.labels(folder=folder)
        for stage in STAGES:
            self.stage_duration.labels(stage=stage)
        for stage, reasons in _EXPECTED_ERRORS.items():
            for reason in reasons:
                self.errors.labels(stage=stage, reason=reason.value)

    def serve(self, address: str, port: int) -> int:
        """Serve ``/metrics`` from a background thread; return the bound port (``port=0`` picks one)."""
        if self._server is not None:
            raise RuntimeError("metrics server already running")
        self._server, self._thread = start_http_server(port, addr=address, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop the HTTP server (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self._thread = None

    def set_build_info(
        self,
        *,
        version: str,
        engine: str,
        weights_sha256: str | None,
        torch: str,
        cuda: str | None,
    ) -> None:
        """Publish what is running; replaces any earlier build-info series.

        What does not apply (no weights, no CUDA, no torch) reads ``none``, never an empty label.
        """
        self.build_info.clear()
        self.build_info.labels(
            version=version or NOT_APPLICABLE,
            engine=engine or NOT_APPLICABLE,
            weights_sha256=(weights_sha256 or NOT_APPLICABLE)[:WEIGHTS_SHA_PREFIX],
            torch=torch or NOT_APPLICABLE,
            cuda=cuda or NOT_APPLICABLE,
        ).set(1)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_duration.labels(stage=_label(stage, STAGES, "stage")).observe(seconds)

    def frame_succeeded(self, *, pixels: int, latency_s: float) -> None:
        self.frames.labels(result="ok").inc()
        self.pixels.inc(pixels)
        self.latency.observe(latency_s)
        self.last_success.set(time.time())

    def frame_recovered(self) -> None:
        """A frame whose commit the last run completed and this start finished (no latency known)."""
        self.frames.labels(result="ok").inc()
        self.last_success.set(time.time())

    def frame_failed(self, *, stage: str | Stage, reason: str | Reason) -> None:
        stage_label = _label(stage, ERROR_STAGES, "stage")
        reason_label = _label(reason, REASONS, "reason")
        self.frames.labels(result="failed").inc()
        self.errors.labels(stage=stage_label, reason=reason_label).inc()

    def fatal_error(self, cause: str) -> None:
        self.fatal_errors.labels(cause=_label(cause, FATAL_CAUSES, "cause")).inc()

    def set_inbox_depth(self, n: int) -> None:
        self.inbox_depth.set(n)

    def set_inbox_unmatched(self, n: int) -> None:
        self.inbox_unmatched.set(n)

    def set_queue_depth(self, n: int) -> None:
        self.queue_depth.set(n)

    def set_in_flight(self, n: int) -> None:
        self.in_flight.set(n)

    def set_watcher_up(self, up: bool) -> None:
        self.watcher_up.set(1 if up else 0)

    def claim_refused(self) -> None:
        self.claim_refusals.inc()

    def set_inbox_unclaimable(self, n: int) -> None:
        self.inbox_unclaimable.set(n)

    def set_output_blocked(self, reason: str | None) -> None:
        """Which output fault holds frames back now (None: none); exactly one reason is 1 at a time."""
        for label in OUTPUT_BLOCKED_REASONS:
            self.output_blocked.labels(reason=label).set(1 if label == reason else 0)

    def set_folder_free(self, folder: str, free_bytes: int) -> None:
        self.folder_free.labels(folder=_label(folder, FOLDERS, "folder")).set(free_bytes)

    def frame_pruned(self, *, policy: str, archive_bytes: int, outbox_bytes: int) -> None:
        self.pruned_frames.labels(policy=_label(policy, RETENTION_POLICIES, "policy")).inc()
        self.pruned_bytes.labels(folder="archive").inc(archive_bytes)
        self.pruned_bytes.labels(folder="outbox").inc(outbox_bytes)

    def retention_pass(self, *, behind: bool) -> None:
        self.retention_behind.set(1 if behind else 0)
        self.retention_last_pass.set(time.time())

    def set_device_memory(self, device: str, in_use: int, reserved: int) -> None:
        self.device_memory_in_use.labels(device=device).set(in_use)
        self.device_memory_reserved.labels(device=device).set(reserved)
