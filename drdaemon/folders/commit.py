"""Committing a frame's result so that a crash at any instant loses nothing and doubles nothing.

This module owns the whole commit: :func:`commit_output` (a result) and :func:`fail_frame`
(a frame that cannot be enhanced) run every step below in order, and :meth:`Finisher.recover`
finishes or undoes them after a crash. The frame step (:mod:`drdaemon.service.frame`) calls
one of the two once per frame; the output's suffix and bytes come from its
:class:`~drdaemon.io.formats.OutputFormat`, the files are written by
:mod:`drdaemon.io.durable`.

The outbox, archive and failed folders may be shared by several daemons (hosts on one
network share), each with its own work folder. So a name is never *chosen* in one process's
memory alone: it is *reserved* in the shared folder by a hard link, which fails when the
name exists. The protocol for one claimed frame ``work/N``:

1. choose free final names (output, sidecar, preview, archive; or failed + reason) and
   write them, with this daemon's owner token, to a *plan* ``work/.N.plan.json``;
2. write the output under a temporary dot-name carrying the owner token, fsync, and link it
   to its final name (taken meanwhile by another daemon: choose again from step 1). The
   temporary stays as a second link until the end: it proves the final name is ours. The
   preview likewise;
3. link ``work/N`` into ``archive/`` under its planned name (the same inode: the raw bytes);
4. check that the frame did not change since it was read, then write the sidecar the same
   way (for a failure: link into ``failed/``, then the reason file);
5. unlink ``work/N`` and the temporaries, fsync every folder touched, delete the plan.

On start-up, :meth:`Finisher.recover` looks at every plan: a sidecar that *vouches* for the
frame (its ``input.claim`` is the plan's claim id and its ``input.sha256`` the hash of
``work/N``; another daemon's sidecar for identical bytes under the same name does not) means
step 4 completed, so only step 5 is redone; otherwise the files named in the plan that are provably this daemon's (the
same inode as its temporary, or as ``work/N``) are removed and the frame is enhanced again.
Nobody else's file is ever removed. A frame in ``work/`` without a plan had nothing under
a final name yet and is simply redone.

Names are never reused: when ``frame.tif`` exists in the outbox, the next frame with that
stem is written as ``frame~1.tif`` (then ``~2`` ...), with ``frame~1.tif.json`` beside it.
Names that are not valid UTF-8, hold control characters or are too long to take a suffix
are made so (undecodable bytes and control characters as ``\\xNN``, a long stem cut and
given a hash); the sidecar keeps the exact original name.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import structlog

from drdaemon.config import Folders
from drdaemon.errors import FrameError, Reason, Stage
from drdaemon.folders.claim import WorkItem, distinct_name, free_name, pending_work
from drdaemon.io.durable import (
    NAME_MAX,
    Owner,
    atomic_write,
    current_owner,
    file_sha256,
    fsync_directory,
    remove_temporaries,
    short_name,
    temp_owner,
    temp_path_for,
    try_link,
)
from drdaemon.io.formats import OutputFormat, TiffOutput
from drdaemon.io.sidecar import Sidecar, SidecarDraft, utc_iso

log = structlog.get_logger(__name__)

PLAN_SUFFIX = ".plan.json"
REASON_SUFFIX = ".reason.json"
SIDECAR_SUFFIX = ".json"
#: Attempts at reserving a set of names that other daemons keep taking first.
_NAME_TRIES = 50
#: Bytes of a final name left free for ``~N`` and the longest suffix (``.reason.json``, ``.preview.png``).
_NAME_ROOM = 40
#: Collision indices remembered per finisher (the most recently used names): bounded memory.
_INDEX_MEMORY = 4096


class FrameChanged(Exception):
    """The claimed file changed between its read and its commit: it is read again, not committed."""


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
    owner: str | None = None  # the owner token of the daemon that wrote the plan (its temporaries)
    #: A random id of this claim of the frame, recorded in the sidecar (``input.claim``): only the
    #: sidecar this plan's commit wrote vouches for it, not one for identical bytes under the same name.
    claim: str | None = None

    def final_paths(self) -> list[Path]:
        names = (self.output, self.sidecar, self.preview, self.archive, self.failed, self.reason)
        return [Path(n) for n in names if n is not None]

    def owner_record(self) -> Owner | None:
        return temp_owner(f".{self.owner}.drdaemon.tmp") if self.owner else None


def _named(name: str | None) -> Path:
    """A final name of a plan that must have it (a success plan's output, a failure's reason)."""
    if name is None:
        raise ValueError("the plan names no file for this step")
    return Path(name)


def plan_path(work_file: Path) -> Path:
    return work_file.with_name(f".{short_name(work_file.name)}{PLAN_SUFFIX}")


def display_name(name: str) -> str:
    """``name`` as valid UTF-8 text: bytes that do not decode become ``\\xNN`` (lossy, for names)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def name_hex(name: str) -> str | None:
    """The exact bytes of a name that is not valid UTF-8, in hex (None for a valid name)."""
    raw = os.fsencode(name)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.hex()
    return None


def _escape_controls(text: str) -> str:
    """Control and other unprintable characters as ``\\xNN`` (``\\uNNNN``): none reaches a file name."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}") for ch in text
    )


def final_name(name: str) -> str:
    """The name a frame's final files derive from: valid UTF-8, printable, short enough for any suffix."""
    text = _escape_controls(display_name(name))
    if len(text.encode("utf-8")) <= NAME_MAX - _NAME_ROOM:
        return text
    path = Path(text)
    suffix = path.suffix if len(path.suffix) <= 8 else ""
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    keep = NAME_MAX - _NAME_ROOM - len(suffix) - len(digest) - 1
    stem = text[: len(text) - len(suffix)].encode("utf-8")[:keep].decode("utf-8", "ignore")
    return f"{stem}-{digest}{suffix}"


def output_names(stem: str, outbox: Path, index: int, output_format: OutputFormat) -> tuple[Path, Path, Path]:
    """Output, sidecar and preview paths for ``stem`` with collision index ``index``."""
    base = stem if index == 0 else f"{stem}~{index}"
    output = outbox / f"{base}{output_format.suffix}"
    preview = outbox / f"{base}{output_format.preview_suffix}"
    return output, output.with_name(output.name + SIDECAR_SUFFIX), preview


def output_stem(name: str) -> str:
    """``frame.tiff`` and ``frame.png`` both become ``frame``; the output takes its format's suffix."""
    safe = final_name(name)
    return Path(safe).stem or safe


def _same_file(a: Path, b: Path) -> bool:
    """Whether both names exist and are links to one inode (no symlink is followed)."""
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def sha256_or_none(path: Path) -> str | None:
    """:func:`file_sha256`, or None for a file that cannot be read (it vouches for nothing)."""
    try:
        return file_sha256(path)
    except OSError:
        return None


def _sidecar_of(sidecar: Path, output: str | None, claim: str | None) -> Sidecar | None:
    """The sidecar at ``sidecar`` if it names this output and was written for this claim."""
    try:
        record = Sidecar.model_validate_json(sidecar.read_bytes())
    except (OSError, ValueError):
        return None
    if record.output.path != output:
        return None
    # A plan with a claim id is vouched for only by its own commit's sidecar: on a shared outbox
    # another daemon may have committed identical bytes (a re-sent frame) under the same name.
    if claim is not None and record.input.claim != claim:
        return None
    return record


def sidecar_vouches(sidecar: Path, work_file: Path, output: str | None, claim: str | None = None) -> bool:
    """A sidecar vouches for a frame when it names this output, this claim and the frame's exact bytes."""
    record = _sidecar_of(sidecar, output, claim)
    return record is not None and record.input.sha256 == sha256_or_none(work_file)


@dataclass
class Recovery:
    """What :meth:`Finisher.recover_all` found: frames to enhance again and frames it finished."""

    redo: list[Path] = field(default_factory=list)
    finished: list[Plan] = field(default_factory=list)


class Finisher:
    """Chooses collision-free final names and carries out the commit steps for frames.

    One instance serves all writer threads; choosing names is serialised so two frames with
    the same stem in flight at once never pick the same name, and the names are reserved in
    the folders themselves (links) so that another daemon never takes them either.
    """

    def __init__(
        self,
        outbox: Path,
        archive: Path | None,
        failed: Path | None,
        preview: bool,
        output_format: OutputFormat | None = None,
        owner: Owner | None = None,
    ) -> None:
        self.outbox = Path(outbox)
        self.output_format: OutputFormat = output_format if output_format is not None else TiffOutput()
        self.archive = Path(archive) if archive is not None else None
        self.failed = Path(failed) if failed is not None else None
        self.preview = preview
        self.owner = owner if owner is not None else current_owner()
        self._lock = threading.Lock()
        self._reserved: set[Path] = set()
        self._next_index: OrderedDict[tuple[str, str], int] = OrderedDict()

    @classmethod
    def for_folders(
        cls, folders: Folders, preview: bool, output_format: OutputFormat | None = None, owner: Owner | None = None
    ) -> Finisher:
        return cls(folders.outbox, folders.archive, folders.failed, preview, output_format, owner)

    # -- choosing names -------------------------------------------------------------------
    def _free(self, *paths: Path) -> bool:
        """No final name is taken, and none's kept temporary either (a file planted there is never opened)."""
        return all(
            p not in self._reserved
            and not os.path.lexists(p)
            and not os.path.lexists(temp_path_for(p, owner=self.owner))
            for p in paths
        )

    def _first_free(self, key: tuple[str, str], make: Callable[[int], tuple[Path, ...]]) -> tuple[Path, ...]:
        """The first free set of names ``make(index)``, searching on from the last index used.

        Starting from the last index keeps a station that reuses one name for every frame from
        paying one more ``stat`` per frame it ever sent; only the most recent names are
        remembered, so the memory stays flat over any number of distinct names.
        """
        index = self._next_index.pop(key, 0)
        while not self._free(*(paths := make(index))):
            index += 1
        self._next_index[key] = index
        while len(self._next_index) > _INDEX_MEMORY:
            self._next_index.popitem(last=False)
        return paths

    def _distinct(self, directory: Path, name: str) -> Path:
        base = final_name(name)
        return self._first_free((str(directory), base), lambda i: (directory / distinct_name(base, i),))[0]

    def plan_success(
        self, work_file: Path, original_name: str, write_plan: bool = True, output_format: OutputFormat | None = None
    ) -> Plan:
        """Choose output, sidecar, preview and archive names for a frame, and write the plan.

        ``output_format`` is the frame's own (:func:`drdaemon.io.formats.format_for_frame`); by default
        the finisher's.
        """
        stem = output_stem(original_name)
        chosen = output_format if output_format is not None else self.output_format
        with self._lock:
            output, sidecar, preview = self._first_free(
                (str(self.outbox), stem), lambda i: output_names(stem, self.outbox, i, chosen)
            )
            archive = self._distinct(self.archive, original_name) if self.archive is not None else None
            plan = Plan(
                kind="ok",
                work=work_file.name,
                output=str(output),
                sidecar=str(sidecar),
                preview=str(preview) if self.preview else None,
                archive=str(archive) if archive is not None else None,
                owner=self.owner.token,
                claim=secrets.token_hex(16),
            )
            self._reserved.update(plan.final_paths())
        if write_plan:
            self._write_plan(work_file, plan)
        return plan

    def plan_failure(self, work_file: Path, original_name: str) -> Plan:
        """Choose ``failed/<name>`` and ``failed/<name>.reason.json`` for a frame, and write the plan."""
        if self.failed is None:
            raise RuntimeError("this finisher has no failed folder")
        folder = self.failed
        base = final_name(original_name)
        with self._lock:

            def names(index: int) -> tuple[Path, Path]:
                failed = folder / distinct_name(base, index)
                return failed, failed.with_name(failed.name + REASON_SUFFIX)

            failed, reason = self._first_free((str(self.failed), base), names)
            plan = Plan(
                kind="failed", work=work_file.name, failed=str(failed), reason=str(reason), owner=self.owner.token
            )
            self._reserved.update(plan.final_paths())
        self._write_plan(work_file, plan)
        return plan

    def _write_plan(self, work_file: Path, plan: Plan) -> None:
        atomic_write(plan_path(work_file), json.dumps(asdict(plan)).encode(), replace=True, owner=self.owner)

    def release(self, plan: Plan) -> None:
        with self._lock:
            self._reserved.difference_update(plan.final_paths())

    # -- the commit steps -----------------------------------------------------------------
    def write_output(self, plan: Plan, data: bytes, preview: bytes | None = None) -> None:
        """Output, then preview, each reserved by a link; on failure nothing of ours stays under a final name.

        Raises ``FileExistsError`` when another daemon took a name first: choose again.
        """
        atomic_write(_named(plan.output), data, keep_temp=True, owner=self.owner)
        if plan.preview is not None and preview is not None:
            try:
                atomic_write(_named(plan.preview), preview, keep_temp=True, owner=self.owner)
            except BaseException:
                self.undo_output(plan)
                raise

    def _ours(self, final: str | None, owner: Owner | None) -> Path | None:
        """``final`` if it is provably this plan's own file (a link to the owner's temporary)."""
        if final is None:
            return None
        path = Path(final)
        if owner is None:  # a plan written before owners were recorded: the old rule, no sidecar = ours
            return path
        return path if _same_file(path, temp_path_for(path, owner=owner)) else None

    def undo_output(self, plan: Plan) -> None:
        """Remove an output and preview of this plan's that no sidecar vouches for, and their temporaries."""
        owner = plan.owner_record()
        for name in (plan.output, plan.preview):
            ours = self._ours(name, owner)
            if ours is not None:
                ours.unlink(missing_ok=True)
            if name is not None and owner is not None:
                temp_path_for(Path(name), owner=owner).unlink(missing_ok=True)
        fsync_directory(self.outbox)

    def undo_output_temporaries(self, plan: Plan) -> None:
        """Drop the second links that proved the output ours, once its sidecar vouches for it."""
        owner = plan.owner_record()
        if owner is None:
            return
        for name in (plan.output, plan.preview):
            if name is not None:
                temp_path_for(Path(name), owner=owner).unlink(missing_ok=True)
        fsync_directory(self.outbox)

    def reserve_archive(self, work_file: Path, plan: Plan, *, kind: Literal["archive", "failed"]) -> bool:
        """Link the raw frame under its final archive (or failed) name; choose again while taken.

        Returns False where the folder has no hard links: the frame is then renamed at the end.
        The plan is rewritten when the name changes, so that a restart knows the link.
        """
        folder = self.archive if kind == "archive" else self.failed
        for _ in range(_NAME_TRIES):
            target = _named(plan.archive if kind == "archive" else plan.failed)
            try:
                linked = try_link(work_file, target)
            except FileExistsError:
                if folder is None:
                    raise
                self._replan_taken(work_file, plan, kind, folder)
                continue
            if linked:
                fsync_directory(target.parent)
            return linked
        raise FileExistsError(f"no free name in {folder} after {_NAME_TRIES} tries")

    def _replan_taken(self, work_file: Path, plan: Plan, kind: str, folder: Path) -> None:
        with self._lock:
            if kind == "archive":
                self._reserved.discard(_named(plan.archive))
                plan.archive = str(self._distinct(folder, Path(plan.archive or "").name))
                self._reserved.add(_named(plan.archive))
            else:
                self._reserved.difference_update({_named(plan.failed), _named(plan.reason)})
                base = Path(plan.failed or "").name
                index = 1
                while True:
                    failed = folder / distinct_name(base, index)
                    reason = failed.with_name(failed.name + REASON_SUFFIX)
                    if self._free(failed, reason):
                        break
                    index += 1
                plan.failed, plan.reason = str(failed), str(reason)
                self._reserved.update({failed, reason})
        self._write_plan(work_file, plan)

    def undo_archive(self, work_file: Path, plan: Plan) -> None:
        """Remove this frame's link in archive/ (or failed/): only a link to ``work_file`` itself."""
        for name in (plan.archive, plan.failed):
            if name is not None and _same_file(Path(name), work_file):
                Path(name).unlink(missing_ok=True)
                fsync_directory(Path(name).parent)  # the removal is durable before the frame is redone

    def write_sidecar(self, plan: Plan, data: bytes) -> None:
        atomic_write(_named(plan.sidecar), data, owner=self.owner)

    def write_reason(self, plan: Plan, data: bytes) -> None:
        atomic_write(_named(plan.reason), data, owner=self.owner)

    def retire_input(self, work_file: Path, plan: Plan) -> None:
        """Drop the raw frame from work/ (its final link exists, or it is renamed there now), then the plan."""
        destination = plan.archive if plan.kind == "ok" else plan.failed
        if destination is not None:
            target = Path(destination)
            if _same_file(target, work_file):
                work_file.unlink()
            else:
                _move_no_replace(work_file, target)
            fsync_directory(target.parent)
        fsync_directory(work_file.parent)
        self.undo_output_temporaries(plan)
        plan_path(work_file).unlink(missing_ok=True)
        fsync_directory(work_file.parent)
        self.release(plan)

    # -- crash recovery -------------------------------------------------------------------
    def recover(self, work: Path) -> list[Path]:
        """Finish or undo what an interrupted run left; return the work items to enhance again."""
        return self.recover_all(work).redo

    def recover_all(self, work: Path) -> Recovery:
        """Like :meth:`recover`, also naming the frames whose commit it finished (to log and count)."""
        work = Path(work)
        recovery = Recovery()
        for plan_file in sorted(work.glob(f".*{PLAN_SUFFIX}")):
            plan = self._recover_plan(work, plan_file)
            if plan is not None:
                recovery.finished.append(plan)
        for folder in (work, self.outbox, self.archive, self.failed):
            if folder is not None:
                remove_temporaries(folder, self.owner)
        recovery.redo = pending_work(work)
        return recovery

    def _recover_plan(self, work: Path, plan_file: Path) -> Plan | None:
        try:
            plan = Plan(**json.loads(plan_file.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            # A plan is written atomically, so this is not ours to interpret; the frame is redone.
            plan_file.unlink(missing_ok=True)
            return None
        work_file = work / plan.work
        if not os.path.lexists(work_file):
            # The input was retired, so the commit completed; only the plan's removal (and the
            # frame's log line and count) were missing: it is reported as finished.
            self.undo_output_temporaries(plan)
            plan_file.unlink(missing_ok=True)
            fsync_directory(work)
            return plan if self._recorded(plan) else None
        if self._committed(work_file, plan):
            self._reserved.update(plan.final_paths())
            self.retire_input(work_file, plan)
            return plan
        # Nothing vouches for the files named in the plan: ours go, and the frame is redone.
        self.undo_output(plan)
        self.undo_archive(work_file, plan)
        plan_file.unlink(missing_ok=True)
        fsync_directory(work)
        return None

    def _recorded(self, plan: Plan) -> bool:
        """Whether the plan's record (its sidecar, or reason file) is there: its frame was finished."""
        if plan.kind == "ok":
            return _sidecar_of(_named(plan.sidecar), plan.output, plan.claim) is not None
        return _named(plan.reason).exists()

    def _committed(self, work_file: Path, plan: Plan) -> bool:
        if plan.kind == "ok":
            return sidecar_vouches(_named(plan.sidecar), work_file, plan.output, plan.claim)
        reason = _named(plan.reason)
        if not reason.exists():
            return False
        failed = _named(plan.failed)
        # The failed/ link precedes the reason file; an older daemon renamed after writing it.
        return _same_file(failed, work_file) or not os.path.lexists(failed)


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
    #: The format this frame is written in (bound to it); None: the finisher's.
    output_format: OutputFormat | None = None
    #: (inode, size, mtime_ns) of the work file when it was read; the commit checks it again.
    signature: tuple[int, int, int] | None = None


@dataclass
class Committed:
    """What a successful commit left behind, for the log and the metrics."""

    sidecar: Sidecar
    output: Path
    write_s: float
    sidecar_s: float


def file_signature(path: Path) -> tuple[int, int, int]:
    """(inode, size, mtime_ns) of ``path`` itself (a symlink is not followed)."""
    st = os.lstat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


#: A write this close (seconds) to the read may leave the mtime as it was (coarse file timestamps).
_MTIME_GRAIN_S = 1.0


def _check_unchanged(item: WorkItem, result: FrameOutput) -> None:
    """Raise :class:`FrameChanged` unless the work file still is what was read and hashed.

    Inode, size and mtime tell almost every change; a file modified within the timestamp's
    grain of its read could keep all three, so such a recent file is hashed again.
    """
    signature = result.signature
    if signature is None:
        return
    name = display_name(item.original.name)
    try:
        now = file_signature(item.path)
    except OSError as exc:
        raise FrameChanged(f"{name} vanished from work/ before its commit: {exc}") from exc
    if now != signature:
        raise FrameChanged(f"{name} changed after it was read (inode, size, mtime {signature} -> {now})")
    if (
        now[2] / 1e9 > result.draft.started_wall - _MTIME_GRAIN_S
        and sha256_or_none(item.path) != result.draft.input_sha256
    ):
        raise FrameChanged(f"{name} changed after it was read (same size and mtime, new content)")


def _reserve_outputs(
    item: WorkItem,
    finisher: Finisher,
    data: bytes,
    preview_of: Callable[[], bytes | None],
    write_plan: bool,
    output_format: OutputFormat | None = None,
) -> tuple[Plan, bytes | None, float]:
    """Plan and link the output (and preview) under names no other daemon holds; retry while taken."""
    preview: bytes | None = None
    for _ in range(_NAME_TRIES):
        plan = finisher.plan_success(item.path, item.original.name, write_plan=write_plan, output_format=output_format)
        start = time.perf_counter()
        try:
            if plan.preview is not None and preview is None:
                preview = preview_of()
            finisher.write_output(plan, data, preview)
        except FileExistsError:
            finisher.release(plan)  # another daemon (or a stranger) took the name: choose again
            continue
        except BaseException:
            finisher.release(plan)
            raise
        return plan, preview, time.perf_counter() - start
    raise FileExistsError(f"no free output name for {display_name(item.original.name)} after {_NAME_TRIES} tries")


def commit_output(item: WorkItem, result: FrameOutput, finisher: Finisher, *, retire_input: bool = True) -> Committed:
    """Plan, write output and preview, link the archive, write the sidecar, then retire the raw frame.

    With ``retire_input=False`` (``drdaemon enhance``) no plan file is written and the input
    stays where it is. Raises :class:`FrameError` (stage write) when the outbox refuses, and
    :class:`FrameChanged` when the frame changed since it was read; nothing of the frame then
    stays under a final name.
    """
    output_format = result.output_format if result.output_format is not None else finisher.output_format
    try:
        start = time.perf_counter()
        data = output_format.encode(result.pixels, result.tags)
        encode_s = time.perf_counter() - start
        plan, _, link_s = _reserve_outputs(
            item,
            finisher,
            data,
            lambda: output_format.preview(result.pixels),
            write_plan=retire_input,
            output_format=output_format,
        )
        write_s = encode_s + link_s
    except (OSError, ValueError) as exc:
        raise _write_error(exc) from exc
    try:
        if retire_input and plan.archive is not None:
            finisher.reserve_archive(item.path, plan, kind="archive")
        if retire_input:
            _check_unchanged(item, result)
        start = time.perf_counter()
        sidecar = result.draft.complete(
            input_path=display_name(plan.archive or str(item.original)),
            output_path=str(plan.output),
            data=data,
            shape=list(result.pixels.shape),
            dtype=str(result.pixels.dtype),
            compression=output_format.compression,
            preview=plan.preview,
            write_s=write_s,
            output_format=output_format.name,
            claim=plan.claim,
        )
        finisher.write_sidecar(plan, sidecar.to_bytes())
        sidecar_s = time.perf_counter() - start
    except BaseException as exc:
        finisher.undo_output(plan)  # an output without its sidecar must not stay
        if retire_input:
            finisher.undo_archive(item.path, plan)
            plan_path(item.path).unlink(missing_ok=True)
        finisher.release(plan)
        if isinstance(exc, (OSError, ValueError)):
            raise _write_error(exc) from exc
        raise
    if retire_input:
        try:
            finisher.retire_input(item.path, plan)
        except OSError as exc:
            # The result is committed; the next start sees the sidecar and finishes the move.
            log.error(
                "archive_move_failed",
                frame=display_name(item.original.name),
                error=str(exc),
                note="raw frame stays in work/ until the next start",
            )
    else:
        finisher.undo_output_temporaries(plan)
        finisher.release(plan)
    return Committed(sidecar, _named(plan.output), write_s, sidecar_s)


def _write_error(exc: Exception) -> FrameError:
    error = FrameError(Stage.WRITE, Reason.WRITE_ERROR, f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def fail_frame(item: WorkItem, error: FrameError, finisher: Finisher) -> Path:
    """Move a frame that cannot be enhanced to ``failed/`` beside ``<name>.reason.json``."""
    plan = finisher.plan_failure(item.path, item.original.name)
    cause = error.__cause__ if error.__cause__ is not None else error
    try:
        finisher.reserve_archive(item.path, plan, kind="failed")
        reason = {
            "stage": error.stage.value,
            "reason": error.reason.value,
            "error_class": type(cause).__name__,
            "message": display_name(str(error)),
            "input": display_name(str(item.original)),
            "input_name_hex": name_hex(item.original.name),
            "failed_utc": utc_iso(time.time()),
        }
        finisher.write_reason(plan, (json.dumps(reason, indent=2) + "\n").encode("utf-8"))
    except BaseException:
        finisher.undo_archive(item.path, plan)
        plan_path(item.path).unlink(missing_ok=True)
        finisher.release(plan)
        raise
    finisher.retire_input(item.path, plan)
    return _named(plan.failed)


__all__ = [
    "PLAN_SUFFIX",
    "REASON_SUFFIX",
    "Committed",
    "Finisher",
    "FrameChanged",
    "FrameOutput",
    "Plan",
    "Recovery",
    "commit_output",
    "display_name",
    "fail_frame",
    "file_signature",
    "final_name",
    "name_hex",
    "output_stem",
    "plan_path",
]
