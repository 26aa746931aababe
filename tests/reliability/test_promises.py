"""Issue 23: twelve reliability promises an attack on the daemon found broken, each kept now.

Power loss (an fsync trace and a snapshot of a real filesystem taken mid-commit), the watchdog
while the daemon waits by design, an unrenamable inbox file, a deflate bomb, bad files' bytes
staying resident, links planted at temporary names, an outbox share that goes away, peers on a
shared outbox that kill and restart, identical re-sent frames, a writer that pre-sizes its file,
world-writable weights, and the smaller ones. Tests that need root (chattr, a loop mount) skip
with the reason elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import structlog
import tifffile

from drdaemon.config import Folders
from drdaemon.engines import ClassicalEngine
from drdaemon.folders.claim import WorkItem, claim
from drdaemon.folders.commit import Finisher, Plan, plan_path
from drdaemon.io import durable
from drdaemon.io.limits import ReadLimits
from drdaemon.io.sidecar import Sidecar
from drdaemon.service.daemon import Daemon
from drdaemon.service.frame import commit_frame, enhance_frame, load_frame
from tests.reliability.plant import Plant, dead_owner, ledger
from tests.testkit import FAST_WATCH, frame_bytes, in_process_daemon, sha, tiff_bytes, wait_until

if TYPE_CHECKING:
    from _typeshed import StrOrBytesPath

pytestmark = pytest.mark.reliability

ROOT = os.geteuid() == 0
#: The in-process daemons' watch: fast, with a 2 s grace for incomplete files.
WATCH = FAST_WATCH | {"incomplete_grace_s": 2.0}


# -- helpers ------------------------------------------------------------------------------------
def process(item: WorkItem, finisher: Finisher) -> None:
    commit_frame(enhance_frame(load_frame(item, ReadLimits()), ClassicalEngine()), finisher)


def claim_now(path: Path, work: Path) -> WorkItem:
    item = claim(path, work, time.time(), time.monotonic())
    assert item is not None
    return item


def shared(tmp_path: Path, *names: str) -> list[Folders]:
    """Folders of daemons sharing inbox, outbox, archive and failed, each with its own work folder."""
    base = Folders().resolved(tmp_path)
    out = []
    for name in names:
        folders = base.model_copy(update={"work": tmp_path / f"work-{name}"})
        for _, path in folders:
            path.mkdir(exist_ok=True)
        out.append(folders)
    return out


@contextlib.contextmanager
def running(daemon: Daemon) -> Iterator[list[int]]:
    statuses: list[int] = []
    thread = threading.Thread(target=lambda: statuses.append(daemon.run(install_signal_handlers=False)), daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        daemon.request_stop()
        thread.join(60)


def child_peak_rss(code: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it prints a JSON dict, to which its peak resident bytes are added."""
    script = (
        code
        + "\nimport json, resource, sys\n"
        + ("OUT['peak'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\nprint(json.dumps(OUT))\n")
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def read_in_child(path: Path, limits: str) -> dict[str, Any]:
    """``read_frame`` and ``looks_complete`` on ``path`` in a fresh interpreter under ``limits`` (a
    ``ReadLimits(...)`` expression): the refusal's reason ("read" when it read), whether the file
    counted as complete (1 or 0), the resident bytes before the read and at its peak."""
    return child_peak_rss(f"""
from pathlib import Path
from drdaemon.errors import FrameError
from drdaemon.io.readers import ReadLimits, read_frame, looks_complete
import drdaemon.io.dicom, pydicom.filereader
import resource
OUT = {{"base": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}
limits = {limits}
OUT["complete"] = int(looks_complete(Path({str(path)!r}), limits))
try:
    read_frame(Path({str(path)!r}), limits)
    OUT["reason"] = "read"
except FrameError as error:
    OUT["reason"] = error.reason.value
""")


def can_loop_mount() -> str | None:
    """Why a small ext4 filesystem cannot be mounted here (None: it can)."""
    if not ROOT:
        return "needs root (mkfs.ext4 on a loop file, mount)"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


LOOP_REASON = can_loop_mount()
needs_loop_mount = pytest.mark.skipif(LOOP_REASON is not None, reason=str(LOOP_REASON))


def make_ext4(image: Path, size_mb: int = 48) -> None:
    with image.open("wb") as fh:
        fh.truncate(size_mb << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)


def mount(image: Path, where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(["mount", "-o", "loop", str(image), str(where)], capture_output=True, text=True)
    if run.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image here: {run.stderr.strip()}")


def umount(where: Path, lazy: bool = False) -> None:
    subprocess.run(["umount", *(["-l"] if lazy else []), str(where)], check=True, capture_output=True)


@contextlib.contextmanager
def mounted(image: Path, where: Path) -> Iterator[Path]:
    mount(image, where)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


# -- 1. power loss ----------------------------------------------------------------------------
class Trace:
    """Records fsyncs (by the path of the descriptor), renames, links and unlinks, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, ...]] = []
        real = {name: getattr(os, name) for name in ("fsync", "rename", "link", "unlink")}

        def fsync(fd: int) -> None:
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real["fsync"](fd)

        def two(name: str) -> Callable[..., None]:
            def call(src: StrOrBytesPath, dst: StrOrBytesPath, *args: Any, **kwargs: Any) -> None:
                self.events.append((name, os.fsdecode(src), os.fsdecode(dst)))
                return real[name](src, dst, *args, **kwargs)

            return call

        def unlink(path: StrOrBytesPath, *args: Any, **kwargs: Any) -> None:
            self.events.append(("unlink", os.fsdecode(path)))
            return real["unlink"](path, *args, **kwargs)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", two("rename"))
        monkeypatch.setattr(os, "link", two("link"))
        monkeypatch.setattr(os, "unlink", unlink)

    def index(self, *event: str, after: int = -1) -> int:
        for position, seen in enumerate(self.events):
            if position > after and seen == event:
                return position
        raise AssertionError(f"{event} not found after #{after} in:\n" + "\n".join(map(str, self.events)))


def test_power_loss_trace_frame_data_then_claim_then_archive_each_with_its_folder(
    folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folders.inbox / "f.tif").write_bytes(frame_bytes(1))  # a station that never fsyncs
    trace = Trace(monkeypatch)
    item = claim_now(folders.inbox / "f.tif", folders.work)
    process(item, Finisher.for_folders(folders, preview=False))
    inbox, work, archive = (str(folders.inbox / "f.tif"), str(folders.work / "f.tif"), str(folders.archive / "f.tif"))
    data = trace.index("fsync", inbox)  # the frame's data, before anything names it elsewhere
    renamed = trace.index("rename", inbox, work, after=data)
    trace.index("fsync", str(folders.work), after=renamed)
    inbox_synced = trace.index("fsync", str(folders.inbox), after=renamed)
    linked = trace.index("link", work, archive, after=inbox_synced)
    archive_synced = trace.index("fsync", str(folders.archive), after=linked)
    sidecar = next(i for i, e in enumerate(trace.events) if e[0] == "link" and e[2].endswith("f.tif.json"))
    assert archive_synced < sidecar < trace.index("unlink", work, after=sidecar)


def test_power_loss_trace_recovery_fsyncs_archive_after_removing_a_link(
    folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folders.inbox / "f.tif").write_bytes(frame_bytes(2))
    item = claim_now(folders.inbox / "f.tif", folders.work)
    killed = Finisher.for_folders(folders, preview=False, owner=dead_owner())
    plan = killed.plan_success(item.path, "f.tif")
    assert killed.reserve_archive(item.path, plan, kind="archive")  # linked, then killed before the sidecar
    trace = Trace(monkeypatch)
    assert [p.name for p in Finisher.for_folders(folders, preview=False).recover(folders.work)] == ["f.tif"]
    removed = trace.index("unlink", str(folders.archive / "f.tif"))
    trace.index("fsync", str(folders.archive), after=removed)  # durable before the frame is redone


@needs_loop_mount
def test_power_cut_snapshot_mid_commit_keeps_the_archived_frames_bytes(tmp_path: Path) -> None:
    image, snapshot = tmp_path / "disk.img", tmp_path / "after-power-cut.img"
    make_ext4(image)
    data = frame_bytes(3, shape=(600, 700))  # 840 KB, written by a station that does not fsync
    with mounted(image, tmp_path / "fs") as root:
        folders = Folders().resolved(root)
        for _, path in folders:
            path.mkdir()
        (folders.inbox / "f.tif").write_bytes(data)
        process(claim_now(folders.inbox / "f.tif", folders.work), Finisher.for_folders(folders, preview=False))
        # The power goes now: what the disk holds is what the filesystem wrote to its device so far.
        shutil.copyfile(image, snapshot)
    with mounted(snapshot, tmp_path / "after") as after:  # mounting replays the journal, as a reboot does
        sidecar = after / "outbox" / "f.tif.json"
        if sidecar.exists():
            record = Sidecar.model_validate_json(sidecar.read_bytes())
            archived = after / Path(record.input.path).relative_to(root)
            assert archived.read_bytes() == data, f"the sidecar vouches for {archived.stat().st_size} bytes"
        else:  # the commit is not durable yet; the frame then must be whole where it was
            assert any(
                p.exists() and p.read_bytes() == data for p in (after / "inbox" / "f.tif", after / "work" / "f.tif")
            )


# -- 2. the watchdog while the daemon waits by design -----------------------------------------
def test_watchdog_keeps_pinging_while_a_blocked_outbox_holds_a_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drdaemon.service.notify import SystemdNotifier

    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(0.2)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 0.2 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    daemon = in_process_daemon(tmp_path, watch=WATCH)
    daemon.notifier = SystemdNotifier(address)
    blocked = {"on": True}
    real_write_temp = durable.write_temp

    def read_only_outbox(final: Path, data: bytes, owner: durable.Owner | None = None, **kwargs: Any) -> Path:
        if blocked["on"] and Path(final).parent == daemon.folders.outbox:
            raise OSError(errno.EROFS, "Read-only file system", str(final))
        return real_write_temp(final, data, owner, **kwargs)

    monkeypatch.setattr(durable, "write_temp", read_only_outbox)
    (daemon.folders.inbox / "held.tif").write_bytes(frame_bytes(4))
    pings: list[float] = []
    try:
        with running(daemon):
            gauge = daemon.metrics.registry.get_sample_value
            wait_until(lambda: gauge("drdaemon_output_blocked", {"reason": "read_only"}) == 1, what="the block")
            start = time.monotonic()
            while time.monotonic() - start < 4.0:  # blocked for 20 watchdog intervals
                with contextlib.suppress(TimeoutError):
                    if b"WATCHDOG=1" in listener.recv(4096):
                        pings.append(time.monotonic())
            blocked["on"] = False
            wait_until(lambda: (daemon.folders.outbox / "held.tif.json").exists(), what="the held frame")
    finally:
        listener.close()
    gaps = np.diff([start, *pings, start + 4.0])
    assert gaps.max() < 1.0, f"longest gap between pings {gaps.max():.2f} s while waiting by design"


# -- 3. an unrenamable file -------------------------------------------------------------------
def chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


def can_chattr(tmp_path: Path) -> str | None:
    if not ROOT or shutil.which("chattr") is None:
        return "needs root and chattr (an immutable file)"
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    run = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True)
    if run.returncode != 0:
        return f"this filesystem has no immutable flag: {run.stderr.strip()}"
    chattr("-i", probe)
    probe.unlink()
    return None


def test_an_unrenamable_inbox_file_waits_with_backoff_while_the_rest_flows(tmp_path: Path) -> None:
    reason = can_chattr(tmp_path)
    if reason is not None:
        pytest.skip(reason)
    daemon = in_process_daemon(tmp_path, watch=WATCH)
    inbox = daemon.folders.inbox
    stuck = inbox / "stuck.tif"
    stuck.write_bytes(frame_bytes(50))
    chattr("+i", stuck)
    try:
        with structlog.testing.capture_logs() as logs, running(daemon) as statuses:
            for index in range(5):
                (inbox / f"good{index}.tif").write_bytes(frame_bytes(index))
            wait_until(lambda: len(list(daemon.folders.outbox.glob("good*.tif.json"))) == 5, what="the good frames")
            time.sleep(3.5)  # retries at 1, 2 (then 4) seconds
            gauge = daemon.metrics.registry.get_sample_value
            refusals = gauge("drdaemon_claim_refusals_total")
            assert refusals is not None and 2 <= refusals <= 4, refusals  # retried, with backoff (not every tick)
            assert gauge("drdaemon_inbox_unclaimable_frames") == 1
            assert statuses == [] and stuck.exists()  # still running, the file untouched in the inbox
            chattr("-i", stuck)
            wait_until(lambda: (daemon.folders.outbox / "stuck.tif.json").exists(), timeout=30, what="the freed file")
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            chattr("-i", stuck)
    refused = [e for e in logs if e["event"] == "claim_refused"]
    assert refused and refused[0]["frame"] == "stuck.tif" and "PermissionError" in refused[0]["error"]
    assert statuses == [0]


# -- 4. a deflate bomb ------------------------------------------------------------------------
def deflated_dicom(rows: int, columns: int, filler_bytes: int) -> bytes:
    """A deflated DICOM frame whose data set holds ``filler_bytes`` of zeros in a private element."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1.99")
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.add_new(0x00091010, "LO", "drdaemon test")
    ds.add_new(0x00091011, "OB", bytes(filler_bytes))
    ds.PixelData = np.arange(rows * columns, dtype="<u2").tobytes()
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zipped = packer.compress(body.getvalue()) + packer.flush()
    head = DicomBytesIO()
    from pydicom.filewriter import write_file_meta_info

    head.is_little_endian, head.is_implicit_VR = True, False
    write_file_meta_info(head, meta)
    del ExplicitVRLittleEndian
    return b"\0" * 128 + b"DICM" + head.getvalue() + zipped


def test_a_deflate_bomb_peaks_under_the_decoded_limit_plus_a_margin(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(deflated_dicom(64, 64, 600 << 20))  # 600 MB of zeros in about 0.6 MB
    assert bomb.stat().st_size < 2 << 20
    limit, margin = 20 << 20, 64 << 20  # input.max_decoded_bytes, and the stated margin
    out = read_in_child(bomb, f"ReadLimits(max_pixels=20_000_000, max_bytes=100_000_000, max_decoded_bytes={limit})")
    assert out["reason"] == "too_large"
    assert out["complete"] == 1  # the watcher lets it through to be refused with a reason
    assert out["peak"] - out["base"] < limit + margin, (out["peak"] - out["base"]) >> 20


def test_a_deflated_frame_within_the_limits_still_reads(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    from drdaemon.io.readers import read_frame

    path = tmp_path / "ok.dcm"
    path.write_bytes(deflated_dicom(64, 80, 1000))
    frame = read_frame(path, ReadLimits(max_decoded_bytes=1 << 20))
    assert frame.format == "dicom" and frame.shape == (64, 80)
    assert np.array_equal(frame.pixels.ravel(), np.arange(64 * 80, dtype=np.uint16))


# -- 5. bad files' bytes do not stay resident -------------------------------------------------
def zlib_tagged_garbage_tiff(path: Path, shape: tuple[int, int]) -> None:
    """A TIFF whose header is whole but whose 'zlib' strip is not zlib: it fails only once decoded."""
    tifffile.imwrite(path, np.zeros(shape, np.uint16), rowsperstrip=shape[0])
    with path.open("r+b") as fh:
        raw = fh.read(16)
        offset = struct.unpack("<I", raw[4:8])[0]
        fh.seek(offset)
        count = struct.unpack("<H", fh.read(2))[0]
        for index in range(count):
            fh.seek(offset + 2 + 12 * index)
            tag = struct.unpack("<H", fh.read(2))[0]
            if tag == 259:  # Compression: 1 -> 8 (zlib)
                fh.seek(offset + 2 + 12 * index + 8)
                fh.write(struct.pack("<H", 8))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_resident_memory_returns_after_large_bad_files(tmp_path: Path) -> None:
    plant = Plant(tmp_path)
    daemon = plant.daemon("a", extra="[input]\nmax_pixels = 100000000\nmax_bytes = 400000000\n")

    def records_reach(wanted: int) -> Callable[[], bool]:
        return lambda: plant.records() == wanted

    daemon.start()
    try:
        daemon.wait_ready()
        plant.drop("warm.tif", frame_bytes(1))
        plant.wait_for(lambda: plant.records() == 1)
        time.sleep(1.0)
        assert daemon.process is not None
        before = rss_bytes(daemon.process.pid)
        for index in range(3):  # 98 MB each
            bad = tmp_path / f".bad{index}.part"
            zlib_tagged_garbage_tiff(bad, (7000, 7000))
            os.rename(bad, plant.dirs["inbox"] / f"bad{index}.tif")
            plant.wait_for(records_reach(2 + index), 120)
        time.sleep(1.0)
        after = rss_bytes(daemon.process.pid)
        assert daemon.stop() == 0
    finally:
        plant.stop_all()
    assert sorted(n for n in plant.names("failed") if n.endswith(".reason.json")) == [
        f"bad{i}.tif.reason.json" for i in range(3)
    ]
    assert after - before < 80 << 20, f"resident memory grew by {(after - before) >> 20} MB"


def test_a_file_whose_header_claims_too_much_is_refused_before_it_is_read_whole(tmp_path: Path) -> None:
    big = tmp_path / "big.tif"
    data = bytearray(tiff_bytes(np.zeros((8, 8), np.uint16)))
    with big.open("wb") as fh:  # a 1 GB file (sparse on disk) whose header claims 8x8 pixels...
        fh.write(data)
        fh.truncate(1 << 30)
    out = read_in_child(big, "ReadLimits(max_pixels=32, max_bytes=2 << 30)")
    # ...and is refused (a multi-page or oversize claim would be too) without reading its gigabyte.
    assert out["reason"] in ("unsupported", "too_large", "unreadable", "truncated"), out
    assert out["peak"] - out["base"] < 200 << 20, (out["peak"] - out["base"]) >> 20


def test_a_header_that_claims_too_many_pixels_is_refused_before_the_read(tmp_path: Path) -> None:
    big = tmp_path / "huge.tif"
    with big.open("wb") as fh:
        tifffile.imwrite(fh, np.zeros((4, 4), np.uint16))
    with tifffile.TiffFile(big) as tif:
        offsets = {t.name: t.valueoffset for t in tif.pages.first.tags.values()}
    with big.open("r+b") as fh:  # claim 60000 x 60000 pixels, and make the file 1 GB (sparse)
        for tag in ("ImageWidth", "ImageLength"):
            fh.seek(offsets[tag])
            fh.write(struct.pack("<H", 60000))
        fh.truncate(1 << 30)
    out = read_in_child(big, "ReadLimits(max_pixels=20_000_000, max_bytes=2 << 30)")
    assert out["reason"] == "too_large", out
    assert out["peak"] - out["base"] < 100 << 20, (out["peak"] - out["base"]) >> 20


# -- 6. links planted at temporary names ------------------------------------------------------
def test_links_planted_at_every_temporary_name_never_touch_their_target(
    folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = folders.archive / "precious.tif"
    victim.write_bytes(b"an archived raw frame")
    alternate = iter(range(10**6))
    # Pin every other random tag, so that the planted links sit at the names the daemon tries first.
    monkeypatch.setattr(
        durable, "_nonce", lambda: "_feed" if next(alternate) % 2 == 0 else "_" + os.urandom(6).hex(), raising=False
    )
    finisher = Finisher.for_folders(folders, preview=True)

    def plant_links(final: Path) -> None:
        for tag in ("", "_feed"):
            with contextlib.suppress(FileExistsError):
                durable.temp_path_for(final, tag=tag, owner=finisher.owner).symlink_to(victim)

    good, bad = folders.inbox / "good.tif", folders.inbox / "bad.tif"
    good.write_bytes(frame_bytes(5))
    bad.write_bytes(b"II*\x00 not a frame")
    for name in ("good.tif", "good.tif.json", "good.preview.png"):
        plant_links(folders.outbox / name)
    for name in ("bad.tif", "bad.tif.reason.json"):
        plant_links(folders.failed / name)
    item = claim_now(good, folders.work)
    plant_links(plan_path(item.path))
    process(item, finisher)
    from drdaemon.errors import FrameError
    from drdaemon.folders.commit import fail_frame

    failed_item = claim_now(bad, folders.work)
    plant_links(plan_path(failed_item.path))
    with pytest.raises(FrameError) as error:
        load_frame(failed_item, ReadLimits())
    fail_frame(failed_item, error.value, finisher)
    assert victim.read_bytes() == b"an archived raw frame"
    assert stat.S_IMODE(victim.stat().st_mode) & 0o222  # untouched, still a plain file
    sidecars = list(folders.outbox.glob("good*.tif.json"))
    assert len(sidecars) == 1 and Sidecar.model_validate_json(sidecars[0].read_bytes()).input.sha256 == sha(
        frame_bytes(5)
    )
    assert list(folders.failed.glob("bad*.reason.json"))


def test_temporary_names_cannot_be_predicted_from_another_process(tmp_path: Path) -> None:
    code = (
        "from pathlib import Path; from drdaemon.io.durable import temp_path_for;"
        "print(temp_path_for(Path('/o/x.tif')).name)"
    )
    names = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert len(names) == 2  # even a process with the same pid would not repeat another's names


# -- 7. an outbox share that goes away --------------------------------------------------------
@needs_loop_mount
def test_an_unmounted_outbox_share_holds_frames_until_it_is_mounted_again(tmp_path: Path) -> None:
    image = tmp_path / "share.img"
    make_ext4(image, 32)
    daemon = in_process_daemon(tmp_path / "station", watch=WATCH)
    outbox = daemon.folders.outbox
    mount(image, outbox)
    (outbox / "lost+found").rmdir()  # the share holds frames only
    try:
        with structlog.testing.capture_logs() as logs, running(daemon) as statuses:
            (daemon.folders.inbox / "first.tif").write_bytes(frame_bytes(1))
            wait_until(lambda: (outbox / "first.tif.json").exists(), what="the first frame")
            umount(outbox, lazy=True)  # the share goes away under the daemon
            assert not os.path.ismount(outbox)
            (daemon.folders.inbox / "second.tif").write_bytes(frame_bytes(2))
            gauge = daemon.metrics.registry.get_sample_value
            wait_until(lambda: gauge("drdaemon_output_blocked", {"reason": "unmounted"}) == 1, what="the block")
            time.sleep(1.5)
            assert list(outbox.iterdir()) == []  # nothing written to the local disk under the mount point
            assert list(daemon.folders.failed.iterdir()) == []
            mount(image, outbox)  # the share is back
            wait_until(lambda: (outbox / "second.tif.json").exists(), what="the held frame")
            wait_until(lambda: gauge("drdaemon_output_blocked", {"reason": "unmounted"}) == 0, what="the gate to clear")
        assert statuses == [0]
        names = sorted(p.name for p in outbox.iterdir())
        assert [n for n in names if not n.startswith(".")] == [
            "first.tif",
            "first.tif.json",
            "second.tif",
            "second.tif.json",
        ], names
        assert sorted(p.name for p in daemon.folders.archive.iterdir()) == ["first.tif", "second.tif"]
    finally:
        subprocess.run(["umount", "-l", str(outbox)], capture_output=True)
    assert any(e["event"] == "output_blocked" and e["reason"] == "unmounted" for e in logs)


def test_a_vanished_mount_point_is_not_recreated(tmp_path: Path) -> None:
    from drdaemon.folders.mounts import MountWatch
    from drdaemon.service.output import OutputGate
    from drdaemon.service.prometheus import DaemonMetrics

    share, local = tmp_path / "share", tmp_path / "local"
    share.mkdir()
    local.mkdir()
    watch = MountWatch([("outbox", share / "outbox"), ("archive", local / "archive")])
    for _, path in watch.folders:
        path.mkdir()
    watch.record()
    shutil.rmtree(share)  # as when /mnt/share is not mounted: its folder is not there at all
    shutil.rmtree(local / "archive")
    OutputGate(DaemonMetrics(), [p for _, p in watch.folders], watch).recreate_folders()
    assert not share.exists()  # never created on the disk underneath
    assert (local / "archive").is_dir()  # an ordinary deleted folder still is


# -- 8. peers on a shared outbox --------------------------------------------------------------
def test_a_peers_start_up_keeps_a_dead_daemons_proof_of_its_output(tmp_path: Path) -> None:
    from drdaemon.folders.claim import work_identity

    a, b = shared(tmp_path, "a", "b")
    data = frame_bytes(8)
    (a.inbox / "s.tif").write_bytes(data)
    item = claim_now(a.inbox / "s.tif", a.work)
    dead = dead_owner()
    a_owner = durable.Owner(dead.host, dead.pid, dead.start, work_identity(a.work), "0123456789ab")
    killed = Finisher.for_folders(a, preview=False, owner=a_owner)
    done = enhance_frame(load_frame(item, ReadLimits()), ClassicalEngine())
    plan = killed.plan_success(item.path, "s.tif")
    killed.write_output(plan, b"an output whose sidecar was never written")  # killed right after the link
    # Daemon B (same host, same kind of token) starts on the shared outbox.
    b_owner = durable.current_owner(work_identity(b.work))
    Finisher.for_folders(b, preview=False, owner=b_owner).recover(b.work)
    restarted = Finisher.for_folders(a, preview=False, owner=durable.current_owner(work_identity(a.work)))
    redo = restarted.recover(a.work)
    assert [p.name for p in redo] == ["s.tif"]
    commit_frame(
        enhance_frame(load_frame(WorkItem(path=redo[0], original=a.inbox / "s.tif"), ReadLimits()), ClassicalEngine()),
        restarted,
    )
    del done
    result = ledger({"outbox": a.outbox, "archive": a.archive, "failed": a.failed}, [a.work, b.work], [data])
    result.assert_exact()
    assert sorted(p.name for p in a.outbox.iterdir()) == ["s.tif", "s.tif.json"]  # no orphan, no ~1


def test_three_daemons_with_kills_and_re_sent_identical_frames(tmp_path: Path) -> None:
    plant = Plant(tmp_path)
    daemons = [plant.daemon(name) for name in ("a", "b", "c")]
    for daemon in daemons:
        daemon.start()
    rng = random.Random(23)
    distinct = [frame_bytes(100 + i) for i in range(8)]
    inputs: list[bytes] = []
    kills = 0
    try:
        for daemon in daemons:
            daemon.wait_ready()
        for index in range(36):
            data = distinct[index % len(distinct)]  # every frame sent several times, byte for byte
            inputs.append(data)
            plant.wait_for(lambda: not (plant.dirs["inbox"] / "s.tif").exists(), 60)
            plant.drop("s.tif", data)
            if index % 6 == 3:
                victim = rng.choice(daemons)
                time.sleep(rng.uniform(0.0, 0.5))
                victim.kill()
                kills += 1
                victim.start()
        plant.wait_for(lambda: plant.records() == len(inputs), 180)
        for daemon in daemons:
            assert daemon.stop() == 0
    finally:
        plant.stop_all()
    result = ledger(plant.dirs, [d.work for d in daemons], inputs)
    result.save("three_daemons_identical_frames")
    result.assert_exact()
    assert kills == 6 and result.outputs == 36


# -- 9. an identical frame re-sent on a shared folder -----------------------------------------
def test_a_peers_sidecar_for_identical_bytes_does_not_vouch_for_this_claim(tmp_path: Path) -> None:
    a, b = shared(tmp_path, "a", "b")
    data = frame_bytes(9)
    (a.inbox / "s.tif").write_bytes(data)
    frozen = claim_now(a.inbox / "s.tif", a.work)
    plan = Finisher.for_folders(a, preview=False, owner=dead_owner()).plan_success(frozen.path, "s.tif")
    assert plan.output is not None and Path(plan.output).name == "s.tif"  # planned, then killed before writing anything
    (b.inbox / "s.tif").write_bytes(data)  # the station sends the same frame again; B takes it
    process(claim_now(b.inbox / "s.tif", b.work), Finisher.for_folders(b, preview=False))
    restarted = Finisher.for_folders(a, preview=False)
    redo = restarted.recover(a.work)
    assert [p.name for p in redo] == ["s.tif"]  # B's sidecar names the same bytes and output, not A's claim
    process(WorkItem(path=redo[0], original=a.inbox / "s.tif"), restarted)
    result = ledger({"outbox": a.outbox, "archive": a.archive, "failed": a.failed}, [a.work, b.work], [data, data])
    result.assert_exact()
    assert result.outputs == 2


# -- 10. a writer that pre-sizes its file -----------------------------------------------------
def test_a_change_between_the_claim_and_the_read_is_read_again(folders: Folders) -> None:
    from drdaemon.folders.commit import FrameChanged

    path = folders.inbox / "f.tif"
    path.write_bytes(frame_bytes(10))
    with path.open("r+b") as writer:  # a station still holding its file
        item = claim_now(path, folders.work)
        writer.seek(0, 2)
        writer.write(b"\0" * 4096)  # it goes on writing after the claim
        writer.flush()
    with pytest.raises(FrameChanged, match="between its claim and its read"):
        load_frame(item, ReadLimits())


def test_a_pre_sized_file_with_holes_is_not_taken_for_whole(tmp_path: Path) -> None:
    from drdaemon.config import WatchConfig
    from drdaemon.folders.watcher import InboxWatcher

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    data = frame_bytes(11, shape=(600, 700))
    path = inbox / "f.tif"
    with path.open("wb") as fh:  # pre-size to the final size, write the first fifth, close, pause
        fh.truncate(len(data))
        fh.write(data[: len(data) // 5])
    watcher = InboxWatcher(
        inbox, WatchConfig(stability_wait_s=0.05, rescan_interval_s=0.05, incomplete_grace_s=30.0, polling=True)
    )
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert not watcher.poll(), "a file four fifths holes was judged whole"
        time.sleep(0.05)
    with path.open("r+b") as fh:  # the writer comes back and finishes
        fh.seek(len(data) // 5)
        fh.write(data[len(data) // 5 :])
    wait_until(lambda: [c.path.name for c in watcher.poll()] == ["f.tif"], 5, "the finished file")


# -- 11. world-writable weights ---------------------------------------------------------------
def test_group_or_world_writable_weights_are_refused_like_sshd_refuses_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    from drdaemon.cli import main
    from drdaemon.defaults import SHIPPED_WEIGHTS
    from drdaemon.exits import EXIT_CONFIG

    open_folder = tmp_path / "shared"
    open_folder.mkdir()
    weights = open_folder / "enhancer.safetensors"
    shutil.copyfile(SHIPPED_WEIGHTS, weights)

    for folder in ("inbox", "outbox", "archive", "failed", "work"):
        (tmp_path / folder).mkdir()

    def check(file_mode: int, folder_mode: int) -> tuple[int, str]:
        os.chmod(weights, file_mode)
        os.chmod(open_folder, folder_mode)
        config = tmp_path / "config.toml"
        config.write_text(
            "[folders]\n"
            'inbox = "inbox"\noutbox = "outbox"\narchive = "archive"\nfailed = "failed"\nwork = "work"\n'
            f'[engine]\nname = "net"\nweights = "{weights}"\n[metrics]\nenabled = false\n'
            '[logging]\nformat = "json"\nlevel = "WARNING"\n'
        )
        capsys.readouterr()
        status = main(["check-config", "--config", str(config)])
        return status, capsys.readouterr().err

    status, err = check(0o666, 0o777)
    assert status == EXIT_CONFIG and "writable by its group and everybody" in err and "chmod go-w" in err
    status, err = check(0o644, 0o777)
    assert status == EXIT_CONFIG and f"{open_folder}, which is writable" in err
    status, err = check(0o664, 0o755)
    assert status == EXIT_CONFIG and "writable by its group" in err
    status, err = check(0o644, 0o755)
    assert status == 0, err


# -- 12. the smaller ones ---------------------------------------------------------------------
def test_a_frame_whose_plan_outlived_its_retirement_is_counted_at_restart(
    folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drdaemon.folders import commit as commit_module

    (folders.inbox / "f.tif").write_bytes(frame_bytes(12))
    item = claim_now(folders.inbox / "f.tif", folders.work)
    kept: dict[str, bytes] = {}
    real_retire = commit_module.Finisher.retire_input

    def killed_before_the_plan_went(self: Finisher, work_file: Path, plan: Plan) -> None:
        kept["plan"] = plan_path(work_file).read_bytes()
        real_retire(self, work_file, plan)
        plan_path(work_file).write_bytes(kept["plan"])  # as if killed between the two unlinks

    monkeypatch.setattr(commit_module.Finisher, "retire_input", killed_before_the_plan_went)
    process(item, Finisher.for_folders(folders, preview=False))
    monkeypatch.undo()
    structlog.reset_defaults()  # info lines too, whatever an earlier test configured
    daemon = in_process_daemon(folders.inbox.parent, watch=WATCH)
    with structlog.testing.capture_logs() as logs, running(daemon):
        wait_until(
            lambda: daemon.metrics.registry.get_sample_value("drdaemon_frames_total", {"result": "ok"}) == 1,
            what="the recovered frame's count",
        )
    assert [e["frame"] for e in logs if e["event"] == "frame_done"] == ["f.tif"]
    assert not plan_path(item.path).exists()


def test_library_warnings_join_the_json_log_once(tmp_path: Path) -> None:
    plant = Plant(tmp_path)
    daemon = plant.daemon("a")
    data = bytearray(tiff_bytes(np.zeros((200, 300), np.uint16), description="bad tag ahead"))
    offset = struct.unpack("<I", data[4:8])[0]
    for index in range(struct.unpack("<H", data[offset : offset + 2])[0]):
        entry = offset + 2 + 12 * index
        if struct.unpack("<H", data[entry : entry + 2])[0] == 270:  # ImageDescription of type 99: tifffile warns
            data[entry + 2 : entry + 4] = struct.pack("<H", 99)
    daemon.start()
    try:
        daemon.wait_ready()
        plant.drop("warns.tif", bytes(data[: len(data) // 2]))  # incomplete: looked at every 0.5 s
        plant.wait_for(lambda: plant.records() == 1, 60)  # failed as truncated after the grace
        assert daemon.stop() == 0
    finally:
        plant.stop_all()
    lines = [line for line in daemon.log.read_text().splitlines() if line.strip()]
    plain = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            plain.append(line)
    assert plain == []
    library = [e for e in daemon.events() if e.get("event") == "library_log" and e.get("logger") == "tifffile"]
    texts = [e["message"] for e in library]
    assert library and len(texts) == len(set(texts))  # each message once, not every half second


def test_a_directory_named_like_a_frame_is_reported_once(tmp_path: Path) -> None:
    daemon = in_process_daemon(tmp_path, watch=WATCH)
    (daemon.folders.inbox / "folder.tif").mkdir()
    with structlog.testing.capture_logs() as logs, running(daemon):
        (daemon.folders.inbox / "f.tif").write_bytes(frame_bytes(13))
        wait_until(lambda: (daemon.folders.outbox / "f.tif.json").exists())
        time.sleep(0.6)  # several rescans
    reported = [e for e in logs if e["event"] == "inbox_directory_ignored"]
    assert len(reported) == 1 and reported[0]["path"].endswith("folder.tif")
    assert (daemon.folders.inbox / "folder.tif").is_dir()


def test_output_names_carry_no_control_bytes(folders: Folders) -> None:
    name = "part\n7\x1b[31m\x7f.tif"
    (folders.inbox / name).write_bytes(frame_bytes(14))
    process(claim_now(folders.inbox / name, folders.work), Finisher.for_folders(folders, preview=True))
    written = [p.name for p in (*folders.outbox.iterdir(), *folders.archive.iterdir())]
    assert len(written) == 4
    assert all(n.isprintable() for n in written), written
    record = Sidecar.model_validate_json(next(folders.outbox.glob("*.json")).read_bytes())
    assert record.input.original_path.endswith(name)  # the sidecar keeps the exact original name
