"""The running daemon's pruning thread: a retention pass at start and every ``retention.interval_s``.

The rules of what may go are :mod:`drdaemon.folders.retention`'s; this module times the
passes, counts what they removed (``drdaemon_retention_pruned_*``) and says when a pass left
a limit unmet (``drdaemon_retention_behind``, the ``retention_behind`` log line).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import structlog

from drdaemon.config import Folders, RetentionConfig
from drdaemon.folders.retention import PrunePlan, Pruning, apply_plan, measure, plan_pruning
from drdaemon.folders.space import FreeBytes
from drdaemon.service.prometheus import DaemonMetrics

log = structlog.get_logger(__name__)


@dataclass
class PassResult:
    plan: PrunePlan
    pruned: list[Pruning] = field(default_factory=list)


def retention_pass(
    folders: Folders,
    config: RetentionConfig,
    free: FreeBytes,
    *,
    dry_run: bool = False,
    stop: threading.Event | None = None,
) -> PassResult:
    """Plan a pass over archive and outbox and (unless ``dry_run``) carry it out."""
    now = time.time()
    plan = plan_pruning(folders, config, measure(folders, free), now)
    result = PassResult(plan)
    if not dry_run:
        result.pruned = list(apply_plan(plan, folders, now, stop))
    return result


class Pruner:
    """Runs retention passes until ``stop`` is set; one pass at a time, in its own thread."""

    def __init__(
        self,
        folders: Folders,
        config: RetentionConfig,
        metrics: DaemonMetrics,
        free: FreeBytes,
        stop: threading.Event,
    ) -> None:
        self.folders = folders
        self.config = config
        self.metrics = metrics
        self.free = free
        self.stop = stop

    def run_forever(self) -> None:
        while not self.stop.is_set():
            self.run_once()
            self.stop.wait(self.config.interval_s)

    def run_once(self) -> PassResult | None:
        try:
            result = retention_pass(self.folders, self.config, self.free, stop=self.stop)
        except OSError as exc:  # a folder gone or unreadable for a moment: the next pass tries again
            log.error("retention_failed", error=str(exc))
            self.metrics.retention_pass(behind=True)
            return None
        for pruning in result.pruned:
            self.metrics.frame_pruned(
                policy=pruning.policy,
                archive_bytes=pruning.frame.raw_bytes,
                outbox_bytes=pruning.frame.outbox_bytes,
            )
        behind = bool(result.plan.behind)
        self.metrics.retention_pass(behind=behind)
        if result.pruned or result.plan.held:
            log.info("retention_pass", pruned=len(result.pruned), held=result.plan.held)
        if behind:
            log.warning(
                "retention_behind",
                unmet=result.plan.behind,
                held=result.plan.held,
                note="a limit stays unmet: frames the rules keep (unfinished, or raw frames whose output is "
                "gone), files no sidecar names, or too few finished frames",
            )
        return result


__all__ = ["PassResult", "Pruner", "retention_pass"]
