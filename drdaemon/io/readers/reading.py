"""Reading a frame file: a regular file only, its size and header checked before the whole read,
then decoded by the format the registry recognises (:mod:`drdaemon.io.readers.registry`).

Every function takes the registry as a parameter (default :data:`FRAME_FORMATS`), so a test or a
station can read one more format without changing the package's registry.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

import numpy as np

from drdaemon.errors import FrameError, Reason, Stage
from drdaemon.io.limits import DEFAULT_LIMITS, ReadLimits, check_size
from drdaemon.io.readers.base import HEAD_BYTES, SUPPORTED_DTYPES, Frame
from drdaemon.io.readers.registry import FRAME_FORMATS, ReaderRegistry


def read_frame(path: Path, limits: ReadLimits = DEFAULT_LIMITS, formats: ReaderRegistry = FRAME_FORMATS) -> Frame:
    """Decode ``path`` into a :class:`Frame`, or raise :class:`FrameError` saying why not."""
    return read_frame_bytes(path, limits, formats)[0]


def read_frame_bytes(
    path: Path, limits: ReadLimits = DEFAULT_LIMITS, formats: ReaderRegistry = FRAME_FORMATS
) -> tuple[Frame, bytes]:
    """Read ``path`` once and decode it from memory; the bytes come back for hashing.

    The daemon hashes exactly the bytes it decoded, so a frame is never read twice.
    """
    frame, data, _ = read_frame_file(path, limits, formats)
    return frame, data


def read_frame_file(
    path: Path, limits: ReadLimits = DEFAULT_LIMITS, formats: ReaderRegistry = FRAME_FORMATS
) -> tuple[Frame, bytes, os.stat_result]:
    """Like :func:`read_frame_bytes`, with the file's status as it was when read (to detect change)."""
    path = Path(path)
    data, status = read_regular(path, limits, formats)
    return decode_frame(data, path.name, limits, formats), data, status


_KINDS = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
}


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (for the reason file)."""
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def open_regular(path: Path) -> int:
    """Open ``path`` for reading only if it is a regular file: never follows a symlink, never blocks.

    A FIFO opened without ``O_NONBLOCK`` would block until a writer appears; a symlink would
    lead outside the inbox. Both are refused as :data:`Reason.UNSUPPORTED` before any byte is read.
    """
    name = Path(path).name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        try:
            kind = file_kind(os.lstat(path).st_mode)
        except OSError:
            kind = ""
        if kind and not stat.S_ISREG(os.lstat(path).st_mode):
            raise FrameError(Stage.READ, Reason.UNSUPPORTED, f"{name} is {kind}; only regular files are read") from exc
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"cannot open {name}: {exc}") from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise FrameError(Stage.READ, Reason.UNSUPPORTED, f"{name} is {file_kind(mode)}; only regular files are read")
    return fd


def read_regular(
    path: Path, limits: ReadLimits = DEFAULT_LIMITS, formats: ReaderRegistry = FRAME_FORMATS
) -> tuple[bytes, os.stat_result]:
    """The whole content of a regular file, and its status before the read; size- and header-checked first.

    The header is read from the file itself (:func:`check_header`), so a file whose header
    claims too large a frame, or that no format reads, is refused before its bytes are read
    into memory.
    """
    fd = open_regular(path)
    try:
        status = os.fstat(fd)
        check_size(Path(path).name, status.st_size, limits)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            check_header(fh, Path(path).name, status.st_size, limits, formats)
            fh.seek(0)
            data = fh.read(status.st_size)  # a file that grows meanwhile is caught by the change check
    except OSError as exc:
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"cannot read {Path(path).name}: {exc}") from exc
    finally:
        os.close(fd)
    return data, status


def decode_frame(
    data: bytes, name: str, limits: ReadLimits = DEFAULT_LIMITS, formats: ReaderRegistry = FRAME_FORMATS
) -> Frame:
    """Decode a whole file held in memory by the format that recognises it; ``name`` gives its
    suffix and is used in messages."""
    check_size(name, len(data), limits)
    frame = formats.recognise(data[:HEAD_BYTES], name).decode(data, name, limits)
    if frame.pixels.dtype not in SUPPORTED_DTYPES:
        raise FrameError(
            Stage.READ,
            Reason.UNSUPPORTED,
            f"{name} has dtype {frame.pixels.dtype}; supported are uint8, uint16, float32",
        )
    return frame


def check_header(
    fh: BinaryIO, name: str, size: int, limits: ReadLimits, formats: ReaderRegistry = FRAME_FORMATS
) -> None:
    """Check the header of the open file against ``limits`` before the whole read, by its format.

    A TIFF's and a PNG's header are checked here; other formats are checked from their header
    once read (a DICOM's, a ``.his``'s) or have none (``.raw``: its size is the layout's). A file
    that no format recognises is refused here, as :func:`decode_frame` would refuse it.
    """
    fh.seek(0)
    head = fh.read(HEAD_BYTES)
    formats.recognise(head, name).check_header(fh, head, name, size, limits)


def looks_complete(path: Path, limits: ReadLimits = DEFAULT_LIMITS, formats: ReaderRegistry = FRAME_FORMATS) -> bool:
    """Cheap test, without decoding pixels, that a file is a whole image and not one being written.

    Used by the watcher before claiming; a file that fails here stays in the inbox and is
    looked at again, while a file that is stable but never completes is claimed after all
    and fails in :func:`read_frame` with a reason file. Only a regular file is opened. A file
    over ``limits`` counts as complete: the reader refuses it with a reason, without reading it.
    A file that no format recognises (yet) is not complete.
    """
    try:
        fd = open_regular(path)
    except FrameError:
        return False
    try:
        with os.fdopen(fd, "rb") as fh:
            head = fh.read(HEAD_BYTES)
            size = os.fstat(fh.fileno()).st_size
            if size > limits.max_bytes:
                return True
            fmt = formats.find(head, Path(path).name)
            return fmt is not None and fmt.complete(fh, head, size, limits)
    except Exception:  # noqa: BLE001 - anything unparsable is "not complete yet"
        return False


def recognised_file(path: Path, formats: ReaderRegistry = FRAME_FORMATS) -> bool:
    """Whether a format of ``formats`` recognises the file at ``path`` by its name or first bytes
    (a DICOM file without a suffix, say); False for a file that cannot be opened."""
    try:
        with Path(path).open("rb") as fh:
            return formats.find(fh.read(HEAD_BYTES), Path(path).name) is not None
    except OSError:
        return False


class DicomError(ValueError):
    """A DICOM file that is not one gray radiograph."""


def full_range_u16(pixels: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Pixels spread from the header's value range onto 0..65535 (2-D, any dtype in; 2-D uint16 out)."""
    low, high = value_range
    scale = 65535.0 / max(high - low, 1e-12)
    return np.round((np.clip(pixels.astype(np.float64), low, high) - low) * scale).astype(np.uint16)


def read_pixels(path: Path, limits: ReadLimits = DEFAULT_LIMITS, formats: ReaderRegistry = FRAME_FORMATS) -> np.ndarray:
    """A frame's pixels as the daemon reads them, a DICOM frame spread from the range its header
    allows onto 16 bits (:func:`full_range_u16`). For the evaluation, the bench and the trainer's
    oracle, which score pixels; raises :class:`FrameError`. 2-D, the file's dtype (uint16 for DICOM).
    """
    frame = read_frame(path, limits, formats)
    if frame.dicom is not None:
        return full_range_u16(frame.pixels, frame.dicom.value_range)
    return frame.pixels


def read_dicom(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> np.ndarray:
    """One single-frame gray DICOM image as uint16 over the full range, brighter = more signal.

    The daemon's reading (polarity, rescale, refusals), then the frame spread from the range its
    header allows (e.g. 0..1023 for 10 stored bits) onto 16 bits, so that a fixed display
    rendition (``x / 257``) shows it as its bit depth intends. For the evaluation and the
    trainer's radiograph judge; :class:`DicomError` for anything else.
    """
    try:
        frame = read_frame(Path(path), limits)
    except FrameError as exc:
        raise DicomError(f"{Path(path).name}: {exc}") from exc
    if frame.dicom is None:
        raise DicomError(f"{Path(path).name} is not a DICOM file (no DICM marker after the preamble)")
    return full_range_u16(frame.pixels, frame.dicom.value_range)
