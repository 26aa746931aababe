"""``drdaemon selftest``: one generated frame through the configured engine and the real folder protocol.

The install guide's last step. The frame (a synthetic casting radiograph,
:mod:`drdaemon.physics`) is written into an inbox, claimed into ``work/``, read and
hashed, enhanced by the configured engine, and committed by the daemon's own functions
(plan, output, archive link, sidecar, retire); then the output, the sidecar and both hashes
are checked and the latency printed. The inbox watcher is not part of it.

Where: by default in a temporary tree, one hidden folder inside each configured folder
(``<folder>/.drdaemon-selftest-<owner>``), so that every step runs on the very filesystem
mounts the daemon uses (a share mounted on the inbox included); the tree is removed at the
end. With ``dry_run`` the configured folders themselves, under a hidden frame name
(``.drdaemon-selftest-<owner>.tif``) that the watcher, recovery and pruning never take; every
file it made is removed at the end, so nothing is left behind.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import tifffile

from drdaemon.config import Folders, Settings
from drdaemon.engines import Engine, reader_window
from drdaemon.errors import FrameError, Stage
from drdaemon.folders.claim import claim
from drdaemon.folders.commit import SIDECAR_SUFFIX, Committed, Finisher
from drdaemon.io.durable import current_owner, file_sha256
from drdaemon.io.formats import configured_output_format
from drdaemon.io.readers import read_frame_file
from drdaemon.service.frame import as_frame_error, commit_frame, enhance_frame, load_frame, read_limits
from drdaemon.service.startup import prepare_folders

#: (height, width) of the generated frame unless asked otherwise.
DEFAULT_SIZE = (512, 512)


class SelftestFailed(Exception):
    """The frame did not make it through, or what came out is not what the sidecar says."""


@dataclass
class SelftestReport:
    shape: tuple[int, int]
    engine: str
    device: str
    latency_s: float  # the frame's claim to its committed sidecar
    timings: dict[str, float]
    checks: list[str] = field(default_factory=list)


def generated_frame(height: int, width: int) -> bytes:
    """A 16-bit TIFF of a synthetic casting exposure (seeded: the same frame every time)."""
    from drdaemon.physics import generate_one

    pixels = generate_one(seed=0, subset=14, index=0, height=height, width=width)[0]
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels)
    return buffer.getvalue()


def selftest_folders(configured: Folders, token: str, dry_run: bool) -> Folders:
    """The folders the self test runs in: the configured ones (dry run) or a hidden one inside each."""
    if dry_run:
        return configured
    # The temporary tree is the selftest's own: created whatever folders.create says.
    return Folders(**{name: path / f".drdaemon-selftest-{token}" for name, path in configured}, create=True)


def run_selftest(
    settings: Settings, engine: Engine, *, dry_run: bool = False, size: tuple[int, int] = DEFAULT_SIZE
) -> SelftestReport:
    """Run one generated frame through ``engine`` and the folder protocol; raise :class:`SelftestFailed`."""
    token = current_owner().token
    folders = selftest_folders(settings.folders, token, dry_run)
    name = f".drdaemon-selftest-{token}.tif" if dry_run else "selftest.tif"
    data = generated_frame(*size)
    try:
        prepare_folders(folders)
        engine.warm_up()
        committed, latency_s = _through_the_protocol(settings, engine, folders, name, data)
        report = SelftestReport(
            shape=size,
            engine=engine.name,
            device=engine.device,
            latency_s=latency_s,
            timings=dict(committed.sidecar.timings),
        )
        report.checks = _check(committed, folders, name, data, settings.output.preview_png)
        return report
    finally:
        _clean_up(settings.folders, folders, token, dry_run)


def _through_the_protocol(
    settings: Settings, engine: Engine, folders: Folders, name: str, data: bytes
) -> tuple[Committed, float]:
    staging = folders.inbox / f".{name}.part"
    staging.write_bytes(data)
    staging.rename(folders.inbox / name)
    start = time.monotonic()
    item = claim(folders.inbox / name, folders.work, time.time(), start)
    if item is None:
        raise SelftestFailed(f"the frame vanished from {folders.inbox} before it was claimed")
    finisher = Finisher.for_folders(
        folders,
        preview=settings.output.preview_png,
        output_format=configured_output_format(settings.output, settings.engine),
    )
    stage = Stage.READ
    try:
        loaded = load_frame(item, read_limits(settings.input), reader_window(settings.engine))
        stage = Stage.ENHANCE
        done = enhance_frame(loaded, engine)
        stage = Stage.WRITE
        committed = commit_frame(done, finisher)
    except (FrameError, OSError, ValueError) as exc:
        error = as_frame_error(stage, exc)
        hint = ""
        if settings.output.format == "dicom":
            hint = " (output.format = 'dicom' takes only DICOM inputs, and the self test's frame is a TIFF)"
        raise SelftestFailed(f"{error.stage.value} failed ({error.reason.value}): {error}{hint}") from exc
    return committed, time.monotonic() - start


def _check(committed: Committed, folders: Folders, name: str, data: bytes, preview: bool) -> list[str]:
    """What a user relies on, checked on disk; a :class:`SelftestFailed` naming the first that does not hold."""
    sidecar = committed.sidecar
    output = committed.output
    sidecar_path = output.with_name(output.name + SIDECAR_SUFFIX)
    archived = Path(sidecar.input.path)
    problems: list[str] = []
    if not sidecar_path.is_file():
        problems.append(f"no sidecar at {sidecar_path}")
    if not output.is_file() or file_sha256(output) != sidecar.output.sha256:
        problems.append(f"the output {output} does not hash as its sidecar's output.sha256 says")
    elif output.stat().st_size != sidecar.output.bytes:
        problems.append(f"the output {output} is not output.bytes long")
    if sidecar.input.sha256 != hashlib.sha256(data).hexdigest():
        problems.append("the sidecar's input.sha256 is not the generated frame's hash")
    if archived.parent != folders.archive or not archived.is_file() or archived.read_bytes() != data:
        problems.append(f"the archived raw frame {archived} is not byte-identical to the frame dropped")
    if preview and not (sidecar.output.preview and Path(sidecar.output.preview).is_file()):
        problems.append("output.preview_png is set but no preview was written")
    leftovers = [p.name for p in (folders.inbox / name, folders.work / name) if p.exists()]
    leftovers += [p.name for p in folders.work.glob(f".{name}*")]
    if leftovers:
        problems.append(f"left behind in inbox/work: {leftovers}")
    if not problems:
        try:
            frame, _, _ = read_frame_file(output)
        except Exception as exc:  # noqa: BLE001 - any reader failure is the finding
            problems.append(f"the output {output} does not read back: {exc}")
        else:
            if frame.shape != tuple(sidecar.input.shape) or str(frame.pixels.dtype) != "uint16":
                problems.append(
                    f"the output reads back as {frame.pixels.dtype} {frame.shape}, not uint16 {sidecar.input.shape}"
                )
    if problems:
        raise SelftestFailed("; ".join(problems))
    return [
        f"output {output.name}: {sidecar.output.bytes} bytes, sha256 {sidecar.output.sha256[:16]}… as the sidecar says",
        f"raw frame archived byte-identical, sha256 {sidecar.input.sha256[:16]}… as the sidecar says",
        f"output reads back as uint16 {sidecar.output.shape[0]} x {sidecar.output.shape[1]}",
        "nothing left in inbox or work",
    ]


def _clean_up(configured: Folders, used: Folders, token: str, dry_run: bool) -> None:
    """Remove what the self test made: its hidden folders, or (dry run) its hidden files in the real ones."""
    if not dry_run:
        for name, path in used:
            if path != getattr(configured, name):
                shutil.rmtree(path, ignore_errors=True)
        return
    for _, folder in used:
        for leftover in folder.glob(f"*drdaemon-selftest-{token}*"):
            leftover.unlink(missing_ok=True)


__all__ = ["DEFAULT_SIZE", "SelftestFailed", "SelftestReport", "generated_frame", "run_selftest", "selftest_folders"]
