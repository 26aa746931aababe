"""Committing a frame's result so that a crash at any instant loses nothing and doubles nothing.

This module owns the whole commit: :func:`commit_output` (a result) and :func:`fail_frame`
(a frame that cannot be enhanced) run every step below in order, and :meth:`Finisher.recover`
finishes or undoes them after a crash. The frame step (:mod:`drdaemon.service.frame`) calls
one of the two once per frame; the output's suffix and bytes come from its
:class:`~drdaemon.io.formats.OutputFormat`, the files are written by
:mod:`drdaemon.io.durable`.

The protocol for one claimed frame ``work/N``:

1. choose the final names (output, sidecar, preview, archive; or failed + reason) and write
   them to a *plan* ``work/.N.plan.json``. The plan is what lets a restart tell its own
   half-committed files from anybody else's;
2. write the output under a temporary dot-name, fsync, and link it to its final name; the
   preview likewise; the sidecar last, the same way (for a failure: the reason file);
3. rename ``work/N`` into ``archive/`` (or ``failed/``), then delete the plan.

On start-up, :meth:`Finisher.recover` looks at every plan: a sidecar (or reason file) on
disk means step 2 completed, so only step 3 is redone; otherwise the output files named in
the plan, which no sidecar vouches for, are removed and the frame is enhanced again. A frame
in ``work/`` without a plan had nothing under a final name yet and is simply redone.

Names are never reused: when ``frame.tif`` exists in the outbox, the next frame with that
stem is written as ``frame~1.tif`` (then ``~2`` ...), with ``frame~1.tif.json`` beside it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import structlog

from drdaemon.config import Folders
from drdaemon.errors import FrameError, Reason, Stage
from drdaemon.folders.claim import WorkItem, distinct_name, free_name, pending_work
from drdaemon.io.durable import atomic_write, fsync_directory, remove_temporaries
from drdaemon.io.formats import OutputFormat, TiffOutput
from drdaemon.io.sidecar import Sidecar, SidecarDraft, utc_iso

log = structlog.get_logger(__name__)

PLAN_SUFFIX = ".plan.json"
REASON_SUFFIX = ".reason.json"
SIDECAR_SUFFIX = ".json"


@dataclass
class Plan:
    """The final names chosen for one work item, written down before any of them is used."""

    kind: Literal["ok", "failed"]
    work: str  # the frame's name in work/
    output: str | None = None
    sidecar: str | None = None
    preview: str | None = None
    archive: str | None = None  # None: leave the input where it is (``drdaemon enhance``)
    failed: str | None = None
    reason: str | None = None

    def final_paths(self) -> list[Path]:
        names = (self.output, self.sidecar, self.preview, self.archive, self.failed, self.reason)
        return [Path(n) for n in names if n is not None]


def _named(name: str | None) -> Path:
    """A final name of a plan that must have it (a success plan's output, a failure's reason)."""
    if name is None:
        raise ValueError("the plan names no file for this step")
    return Path(name)


def plan_path(work_file: Path) -> Path:
    return work_file.with_name(f".{work_file.name}{PLAN_SUFFIX}")


def output_names(stem: str, outbox: Path, index: int, output_format: OutputFormat) -> tuple[Path, Path, Path]:
    """Output, sidecar and preview paths for ``stem`` with collision index ``index``."""
    base = stem if index == 0 else f"{stem}~{index}"
    output = outbox / f"{base}{output_format.suffix}"
    preview = outbox / f"{base}{output_format.preview_suffix}"
    return output, output.with_name(output.name + SIDECAR_SUFFIX), preview


def output_stem(name: str) -> str:
    """``frame.tiff`` and ``frame.png`` both become ``frame``; the output takes its format's suffix."""
    return Path(name).stem or name


class Finisher:
    """Chooses collision-free final names and carries out the commit steps for frames.

    One instance serves all writer threads; choosing names is serialised so two frames with
    the same stem in flight at once never pick the same name.
    """

    def __init__(
        self,
        outbox: Path,
        archive: Path | None,
        failed: Path | None,
        preview: bool,
        output_format: OutputFormat | None = None,
    ) -> None:
        self.outbox = Path(outbox)
        self.output_format: OutputFormat = output_format if output_format is not None else TiffOutput()
        self.archive = Path(archive) if archive is not None else None
        self.failed = Path(failed) if failed is not None else None
        self.preview = preview
        self._lock = threading.Lock()
        self._reserved: set[Path] = set()
        self._next_index: dict[tuple[str, str], int] = {}

    @classmethod
    def for_folders(cls, folders: Folders, preview: bool, output_format: OutputFormat | None = None) -> Finisher:
        return cls(folders.outbox, folders.archive, folders.failed, preview, output_format)

    # -- choosing names -------------------------------------------------------------------
    def _free(self, *paths: Path) -> bool:
        return all(p not in self._reserved and not os.path.lexists(p) for p in paths)

    def _first_free(self, key: tuple[str, str], make: Callable[[int], tuple[Path, ...]]) -> tuple[Path, ...]:
        """The first free set of names ``make(index)``, searching on from the last index used.

        Starting from the last index keeps a station that reuses one name for every frame from
        paying one more ``stat`` per frame it ever sent.
        """
        index = self._next_index.get(key, 0)
        while not self._free(*(paths := make(index))):
            index += 1
        self._next_index[key] = index
        return paths

    def _distinct(self, directory: Path, name: str) -> Path:
        return self._first_free((str(directory), name), lambda i: (directory / distinct_name(name, i),))[0]

    def plan_success(self, work_file: Path, original_name: str, write_plan: bool = True) -> Plan:
        """Reserve output, sidecar, preview and archive names for a frame, and write the plan."""
        stem = output_stem(original_name)
        with self._lock:
            output, sidecar, preview = self._first_free(
                (str(self.outbox), stem), lambda i: output_names(stem, self.outbox, i, self.output_format)
            )
            archive = self._distinct(self.archive, original_name) if self.archive is not None else None
            plan = Plan(
                kind="ok",
                work=work_file.name,
                output=str(output),
                sidecar=str(sidecar),
                preview=str(preview) if self.preview else None,
                archive=str(archive) if archive is not None else None,
            )
            self._reserved.update(plan.final_paths())
        if write_plan:
            self._write_plan(work_file, plan)
        return plan

    def plan_failure(self, work_file: Path, original_name: str) -> Plan:
        """Reserve ``failed/<name>`` and ``failed/<name>.reason.json`` for a frame, and write the plan."""
        if self.failed is None:
            raise RuntimeError("this finisher has no failed folder")
        folder = self.failed
        with self._lock:
            def names(index: int) -> tuple[Path, Path]:
                failed = folder / distinct_name(original_name, index)
                return failed, failed.with_name(failed.name + REASON_SUFFIX)

            failed, reason = self._first_free((str(self.failed), original_name), names)
            plan = Plan(kind="failed", work=work_file.name, failed=str(failed), reason=str(reason))
            self._reserved.update(plan.final_paths())
        self._write_plan(work_file, plan)
        return plan

    def _write_plan(self, work_file: Path, plan: Plan) -> None:
        atomic_write(plan_path(work_file), json.dumps(asdict(plan)).encode(), replace=True)

    def release(self, plan: Plan) -> None:
        with self._lock:
            self._reserved.difference_update(plan.final_paths())

    # -- the commit steps -----------------------------------------------------------------
    def write_output(self, plan: Plan, data: bytes, preview: bytes | None = None) -> None:
        """Output, then preview; on failure nothing of this frame stays under a final name."""
        atomic_write(_named(plan.output), data)
        if plan.preview is not None and preview is not None:
            try:
                atomic_write(_named(plan.preview), preview)
            except BaseException:
                _named(plan.output).unlink(missing_ok=True)
                raise

    def undo_output(self, plan: Plan) -> None:
        """Remove an output and preview that no sidecar vouches for."""
        for name in (plan.output, plan.preview):
            if name is not None:
                Path(name).unlink(missing_ok=True)

    def write_sidecar(self, plan: Plan, data: bytes) -> None:
        atomic_write(_named(plan.sidecar), data)

    def write_reason(self, plan: Plan, data: bytes) -> None:
        atomic_write(_named(plan.reason), data)

    def retire_input(self, work_file: Path, plan: Plan) -> None:
        """Move the raw frame to its final folder (archive or failed) and drop the plan."""
        destination = plan.archive if plan.kind == "ok" else plan.failed
        if destination is not None:
            _move_no_replace(work_file, Path(destination))
        plan_path(work_file).unlink(missing_ok=True)
        self.release(plan)

    # -- crash recovery -------------------------------------------------------------------
    def recover(self, work: Path) -> list[Path]:
        """Finish or undo what an interrupted run left; return the work items to enhance again."""
        work = Path(work)
        for folder in (work, self.outbox, self.archive, self.failed):
            if folder is not None:
                remove_temporaries(folder)
        for plan_file in sorted(work.glob(f".*{PLAN_SUFFIX}")):
            self._recover_plan(work, plan_file)
        return pending_work(work)

    def _recover_plan(self, work: Path, plan_file: Path) -> None:
        try:
            plan = Plan(**json.loads(plan_file.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            # A plan is written atomically, so this is not ours to interpret; the frame is redone.
            plan_file.unlink(missing_ok=True)
            return
        work_file = work / plan.work
        if not work_file.exists():  # the input was retired; only the plan's removal was missing
            plan_file.unlink(missing_ok=True)
            return
        committed = _named(plan.sidecar if plan.kind == "ok" else plan.reason)
        if committed.exists():
            self._reserved.update(plan.final_paths())
            self.retire_input(work_file, plan)
            return
        # Nothing vouches for the outputs named in the plan: they go, and the frame is redone.
        self.undo_output(plan)
        plan_file.unlink(missing_ok=True)


def _move_no_replace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; if a stranger's file took the name meanwhile, add ``~N``."""
    candidate = free_name(target)
    os.rename(source, candidate)
    fsync_directory(candidate.parent)


@dataclass
class FrameOutput:
    """An enhanced frame ready to commit: its pixels, the input's tags, and its sidecar draft."""

    pixels: np.ndarray  # uint16
    tags: Mapping[str, object]
    draft: SidecarDraft


@dataclass
class Committed:
    """What a successful commit left behind, for the log and the metrics."""

    sidecar: Sidecar
    output: Path
    write_s: float
    sidecar_s: float


def commit_output(
    item: WorkItem, result: FrameOutput, finisher: Finisher, *, retire_input: bool = True
) -> Committed:
    """Plan, write output and preview, write the sidecar, then archive the raw frame.

    With ``retire_input=False`` (``drdaemon enhance``) no plan file is written and the input
    stays where it is. Raises :class:`FrameError` (stage write) when the outbox refuses;
    nothing of the frame then stays under a final name.
    """
    plan = finisher.plan_success(item.path, item.original.name, write_plan=retire_input)
    output_format = finisher.output_format
    try:
        start = time.perf_counter()
        data = output_format.encode(result.pixels, result.tags)
        preview = output_format.preview(result.pixels) if plan.preview is not None else None
        finisher.write_output(plan, data, preview)
        write_s = time.perf_counter() - start
    except (OSError, ValueError) as exc:
        finisher.release(plan)
        raise _write_error(exc) from exc
    try:
        start = time.perf_counter()
        sidecar = result.draft.complete(
            input_path=str(plan.archive or item.original),
            output_path=str(plan.output),
            data=data,
            shape=list(result.pixels.shape),
            dtype=str(result.pixels.dtype),
            compression=output_format.compression,
            preview=plan.preview,
            write_s=write_s,
        )
        finisher.write_sidecar(plan, sidecar.to_bytes())
        sidecar_s = time.perf_counter() - start
    except (OSError, ValueError) as exc:
        finisher.undo_output(plan)  # an output without its sidecar must not stay
        finisher.release(plan)
        raise _write_error(exc) from exc
    if retire_input:
        try:
            finisher.retire_input(item.path, plan)
        except OSError as exc:
            # The result is committed; the next start sees the sidecar and finishes the move.
            log.error("archive_move_failed", frame=item.original.name, error=str(exc),
                      note="raw frame stays in work/ until the next start")
    else:
        finisher.release(plan)
    return Committed(sidecar, _named(plan.output), write_s, sidecar_s)


def _write_error(exc: Exception) -> FrameError:
    return FrameError(Stage.WRITE, Reason.WRITE_ERROR, f"{type(exc).__name__}: {exc}")


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
    return _named(plan.failed)


__all__ = [
    "PLAN_SUFFIX",
    "REASON_SUFFIX",
    "Committed",
    "Finisher",
    "FrameOutput",
    "Plan",
    "commit_output",
    "fail_frame",
    "output_stem",
    "plan_path",
]
