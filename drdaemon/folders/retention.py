"""Retention: prune finished frames from the archive and the outbox, oldest first.

A frame is finished when its sidecar, the commit record written last, is in the outbox. A
frame is pruned in this order: its raw frame in the archive, only while its output and sidecar
are both in place and no other link holds it (``work/`` still does until the commit's last
step); then its preview and output; the sidecar last. A crash between two steps leaves a frame
that the next pass finishes, never a raw frame without the record that proves it was enhanced.
Nothing in ``inbox/``, ``work/`` or ``failed/`` is touched, nor a file that no sidecar names,
nor a frame whose raw frame rests outside the configured archive, nor a frame whose sidecar
is younger than :data:`GRACE_S` (another daemon sharing the outbox may still be committing it).

The limits (``[retention]``): an age (the sidecar's mtime), a total size per folder, and a
free-space floor on the archive's and outbox's filesystems. A pass first plans, oldest frame
first, stopping at the first frame that no limit asks for, then applies the plan;
``drdaemon prune --dry-run`` prints the plan alone.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import structlog

from drdaemon.config import Folders, RetentionConfig
from drdaemon.folders.commit import REASON_SUFFIX, SIDECAR_SUFFIX
from drdaemon.folders.space import FreeBytes
from drdaemon.io.durable import fsync_directory
from drdaemon.io.sidecar import Sidecar

log = structlog.get_logger(__name__)

Policy = Literal["max_age", "max_size", "min_free"]
#: The ``policy`` label of ``drdaemon_retention_pruned_frames_total``: the first limit that asked for a frame.
POLICIES: Final = ("max_age", "max_size", "min_free")
#: The folders retention prunes, the ``folder`` label of ``drdaemon_retention_pruned_bytes_total``.
PRUNED_FOLDERS: Final = ("archive", "outbox")
#: Seconds a sidecar must have existed before its frame may be pruned.
GRACE_S: Final = 600.0
_DAY_S: Final = 86400.0


@dataclass(frozen=True)
class FrameFiles:
    """What pruning one finished frame removes, in order: raw frame, preview and output, sidecar."""

    sidecar: Path
    finished: float  # the sidecar's mtime, Unix seconds
    raw: Path | None  # in the archive; None when already gone
    results: tuple[Path, ...]  # preview and output that exist
    raw_bytes: int
    outbox_bytes: int  # results and sidecar


@dataclass(frozen=True)
class Pruning:
    frame: FrameFiles
    policy: Policy


@dataclass
class Usage:
    """Bytes of files in archive and outbox, their filesystems, and the free space there."""

    bytes: dict[str, int]
    device: dict[str, int]
    free: dict[str, int]


@dataclass
class PrunePlan:
    prunings: list[Pruning] = field(default_factory=list)
    #: Frames a limit asked for that the rules keep (unfinished, or a raw frame without its output).
    held: int = 0
    #: The limits still unmet once the plan is carried out (``archive_max_size``, ...): pruning is behind.
    behind: list[str] = field(default_factory=list)


def folder_bytes(folder: Path) -> int:
    """Total size of the regular files directly in ``folder`` (archive and outbox are flat)."""
    total = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue  # removed meanwhile
    return total


def measure(folders: Folders, free: FreeBytes) -> Usage:
    usage = Usage(bytes={}, device={}, free={})
    for name in PRUNED_FOLDERS:
        path: Path = getattr(folders, name)
        usage.bytes[name] = folder_bytes(path)
        usage.device[name] = os.stat(path).st_dev
        usage.free[name] = free(path)
    return usage


def sidecars_oldest_first(outbox: Path) -> list[tuple[float, Path]]:
    """The outbox's sidecars (``*.json``, no dot-files) with their mtimes, oldest first."""
    found: list[tuple[float, Path]] = []
    with os.scandir(outbox) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not name.endswith(SIDECAR_SUFFIX) or name.endswith(REASON_SUFFIX):
                continue
            try:
                if entry.is_file(follow_symlinks=False):
                    found.append((entry.stat(follow_symlinks=False).st_mtime, Path(entry.path)))
            except OSError:
                continue
    return sorted(found, key=lambda item: (item[0], item[1].name))


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def examine(sidecar: Path, folders: Folders, now: float) -> FrameFiles | None:
    """The files of a finished frame that may be pruned now, or None when a rule keeps the frame."""
    try:
        record = Sidecar.model_validate_json(sidecar.read_bytes())
        sidecar_stat = os.lstat(sidecar)
    except (OSError, ValueError):
        return None  # not a sidecar of ours, or gone
    if now - sidecar_stat.st_mtime < GRACE_S:
        return None
    output = sidecar.with_name(sidecar.name[: -len(SIDECAR_SUFFIX)])
    if Path(record.output.path).name != output.name:
        return None  # a record of some other folder
    output_stat = _lstat(output)
    if output_stat is not None and not stat.S_ISREG(output_stat.st_mode):
        return None
    results = [output] if output_stat is not None else []
    outbox_bytes = sidecar_stat.st_size + (output_stat.st_size if output_stat is not None else 0)
    if record.output.preview is not None:
        preview = sidecar.with_name(Path(record.output.preview).name)
        preview_stat = _lstat(preview)
        if preview_stat is not None and stat.S_ISREG(preview_stat.st_mode):
            results.insert(0, preview)
            outbox_bytes += preview_stat.st_size
    raw: Path | None = None
    raw_bytes = 0
    recorded = Path(record.input.path)
    if (raw_stat := _lstat(recorded)) is not None:
        if recorded.parent != folders.archive:
            return None  # a raw frame outside the configured archive (moved folders, `drdaemon enhance`): kept
        if output_stat is None or not stat.S_ISREG(raw_stat.st_mode):
            return None  # the raw frame stays while its output is not in place
        if raw_stat.st_nlink != 1 or raw_stat.st_size != record.input.bytes:
            return None  # still linked elsewhere (in work/: the commit is not over), or not this frame
        raw, raw_bytes = recorded, raw_stat.st_size
    return FrameFiles(sidecar, sidecar_stat.st_mtime, raw, tuple(results), raw_bytes, outbox_bytes)


def _due(config: RetentionConfig, age_s: float, sizes: dict[str, int], free: dict[str, int]) -> Policy | None:
    """The first limit that asks for the oldest remaining frame (of age ``age_s``), or None."""
    if config.max_age_days is not None and age_s > config.max_age_days * _DAY_S:
        return "max_age"
    if any(limit is not None and sizes[name] > limit for name, limit in _size_limits(config)):
        return "max_size"
    if config.min_free_space is not None and min(free.values()) < config.min_free_space:
        return "min_free"
    return None


def _size_limits(config: RetentionConfig) -> tuple[tuple[str, int | None], ...]:
    return (("archive", config.archive_max_size), ("outbox", config.outbox_max_size))


def plan_pruning(folders: Folders, config: RetentionConfig, usage: Usage, now: float) -> PrunePlan:
    """Which frames to prune, oldest first, and which limits stay unmet; nothing is removed."""
    plan = PrunePlan()
    sizes, free = dict(usage.bytes), dict(usage.free)
    for finished, sidecar in sidecars_oldest_first(folders.outbox):
        policy = _due(config, now - finished, sizes, free)
        if policy is None:
            break
        frame = examine(sidecar, folders, now)
        if frame is None:
            plan.held += 1
            continue
        plan.prunings.append(Pruning(frame, policy))
        sizes["archive"] -= frame.raw_bytes
        sizes["outbox"] -= frame.outbox_bytes
        for name in PRUNED_FOLDERS:  # space comes back on the filesystem each file was on
            if usage.device[name] == usage.device["archive"]:
                free[name] += frame.raw_bytes
            if usage.device[name] == usage.device["outbox"]:
                free[name] += frame.outbox_bytes
    plan.behind = [
        f"{name}_max_size" for name, limit in _size_limits(config) if limit is not None and sizes[name] > limit
    ]
    if config.min_free_space is not None and min(free.values()) < config.min_free_space:
        plan.behind.append("min_free_space")
    return plan


def prune_frame(frame: FrameFiles) -> None:
    """Remove one frame's files in the safe order, each folder fsynced before the next step."""
    if frame.raw is not None:
        frame.raw.unlink(missing_ok=True)
        fsync_directory(frame.raw.parent)
    for result in frame.results:
        result.unlink(missing_ok=True)
    frame.sidecar.unlink(missing_ok=True)
    fsync_directory(frame.sidecar.parent)


def apply_plan(
    plan: PrunePlan, folders: Folders, now: float | None = None, stop: threading.Event | None = None
) -> Iterator[Pruning]:
    """Prune the planned frames, each checked against the rules again just before; yield each one pruned."""
    for pruning in plan.prunings:
        if stop is not None and stop.is_set():
            return
        frame = examine(pruning.frame.sidecar, folders, time.time() if now is None else now)
        if frame is None:
            continue  # changed since the plan: kept
        try:
            prune_frame(frame)
        except OSError as exc:
            log.error("prune_failed", sidecar=str(frame.sidecar), error=str(exc))
            continue
        log.info(
            "frame_pruned",
            policy=pruning.policy,
            sidecar=str(frame.sidecar),
            raw=str(frame.raw) if frame.raw is not None else None,
            outputs=[str(p) for p in frame.results],
            archive_bytes=frame.raw_bytes,
            outbox_bytes=frame.outbox_bytes,
            finished_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(frame.finished)),
        )
        yield Pruning(frame, pruning.policy)


__all__ = [
    "GRACE_S",
    "POLICIES",
    "PRUNED_FOLDERS",
    "FrameFiles",
    "PrunePlan",
    "Pruning",
    "Usage",
    "apply_plan",
    "examine",
    "measure",
    "plan_pruning",
    "prune_frame",
]
