"""Reading DR frames from disk: TIFF (classic, BigTIFF, tiled, compressed), PNG, DICOM/DICONDE
and detector raw frames (``.raw`` with a configured layout, ``.his``).

A frame is one 2-D single-channel image. Multi-page and multi-channel files are refused
with :class:`~drdaemon.errors.Reason.UNSUPPORTED` rather than guessed at: a DR station
writes one gray frame per file, and anything else needs a human to look at it. Sizes are
checked from the header before any pixel is decoded, so a corrupt header that claims a
gigapixel cannot exhaust memory. A file is recognised by its content where it has a
signature (DICOM's ``DICM`` marker first, since a DICOM preamble may hold a TIFF header; then
PNG and TIFF) and by its suffix where it has none (``.raw``, ``.his``).
"""

from __future__ import annotations

import io
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import tifffile

from drdaemon.errors import FrameError, Reason, Stage
from drdaemon.io.dicom import DICOM_SUFFIXES, DicomSource, decode_dicom, dicom_complete, has_dicom_marker
from drdaemon.io.limits import DEFAULT_LIMITS, ReadLimits, check_decoded, check_shape, check_size
from drdaemon.io.raw import HIS_SUFFIXES, RAW_SUFFIXES, RawGeometry, decode_his, decode_raw, his_complete

TIFF_SUFFIXES = {".tif", ".tiff"}
PNG_SUFFIXES = {".png"}
SUPPORTED_DTYPES = {np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Every suffix a frame may have (DICOM files are also recognised without one).
FRAME_SUFFIXES = TIFF_SUFFIXES | PNG_SUFFIXES | DICOM_SUFFIXES | RAW_SUFFIXES | HIS_SUFFIXES
#: Bytes enough to recognise every format by its signature (the DICOM marker ends at 132).
HEAD_BYTES = 132
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass
class Frame:
    """A decoded frame and the metadata worth carrying to its output."""

    pixels: np.ndarray
    format: str  # "tiff", "png", "dicom", "raw" or "his"
    #: TIFF tags copied to the output: resolution, resolution unit, description, software.
    tags: dict[str, object] = field(default_factory=dict)
    #: The header of a DICOM input, from which a DICOM output is derived.
    dicom: DicomSource | None = None
    #: The geometry a ``.raw`` or ``.his`` frame was read with.
    raw: RawGeometry | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)


def read_frame(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> Frame:
    """Decode ``path`` into a :class:`Frame`, or raise :class:`FrameError` saying why not."""
    return read_frame_bytes(path, limits)[0]


def read_frame_bytes(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> tuple[Frame, bytes]:
    """Read ``path`` once and decode it from memory; the bytes come back for hashing.

    The daemon hashes exactly the bytes it decoded, so a frame is never read twice.
    """
    frame, data, _ = read_frame_file(path, limits)
    return frame, data


def read_frame_file(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> tuple[Frame, bytes, os.stat_result]:
    """Like :func:`read_frame_bytes`, with the file's status as it was when read (to detect change)."""
    path = Path(path)
    data, status = read_regular(path, limits)
    return decode_frame(data, path.name, limits), data, status


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


def read_regular(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> tuple[bytes, os.stat_result]:
    """The whole content of a regular file, and its status before the read; size- and header-checked first.

    The header is read from the file itself (:func:`check_header`), so a file whose header
    claims too large a frame is refused before its bytes are read into memory.
    """
    fd = open_regular(path)
    try:
        status = os.fstat(fd)
        check_size(Path(path).name, status.st_size, limits)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            check_header(fh, Path(path).name, status.st_size, limits)
            fh.seek(0)
            data = fh.read(status.st_size)  # a file that grows meanwhile is caught by the change check
    except OSError as exc:
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"cannot read {Path(path).name}: {exc}") from exc
    finally:
        os.close(fd)
    return data, status


def decode_frame(data: bytes, name: str, limits: ReadLimits = DEFAULT_LIMITS) -> Frame:
    """Decode a whole file held in memory; ``name`` is only used in messages."""
    check_size(name, len(data), limits)
    head = data[:HEAD_BYTES]
    suffix = Path(name).suffix.lower()
    if has_dicom_marker(head):
        pixels, source = decode_dicom(data, name, limits)
        frame = Frame(pixels=pixels, format="dicom", dicom=source)
    elif suffix in HIS_SUFFIXES:
        pixels, geometry = decode_his(data, name, limits)
        frame = Frame(pixels=pixels, format="his", raw=geometry)
    elif suffix in RAW_SUFFIXES:  # before the signatures: raw pixels may start like anything
        pixels, geometry = decode_raw(data, name, limits)
        frame = Frame(pixels=pixels, format="raw", raw=geometry)
    elif head.startswith(PNG_SIGNATURE):
        frame = _read_png(data, name, limits)
    elif head[:4] in TIFF_MAGICS:
        frame = _read_tiff(data, name, limits)
    elif suffix in DICOM_SUFFIXES:
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"{name} has no DICM marker after a 128-byte preamble")
    else:
        raise FrameError(
            Stage.READ,
            Reason.UNREADABLE,
            f"{name} is neither a TIFF nor a PNG file (nor DICOM with its DICM marker, .raw or .his)",
        )
    _check_pixels(name, frame.pixels)
    return frame


def _check_pixels(name: str, pixels: np.ndarray) -> None:
    if pixels.dtype not in SUPPORTED_DTYPES:
        raise FrameError(
            Stage.READ, Reason.UNSUPPORTED, f"{name} has dtype {pixels.dtype}; supported are uint8, uint16, float32"
        )


def check_header(fh: BinaryIO, name: str, size: int, limits: ReadLimits) -> None:
    """Check a TIFF's or PNG's header, read from the open file, against ``limits`` before the whole read.

    Other formats are checked from their header once read (a DICOM's, a ``.his``'s) or have
    none (``.raw``: its size is the layout's).
    """
    head = fh.read(HEAD_BYTES)
    if has_dicom_marker(head):
        return
    if head.startswith(PNG_SIGNATURE):
        height, width = _png_size(head, name)
        check_shape(name, (height, width), limits)
        check_decoded(name, height * width * _PNG_CHANNELS.get(head[25], 4) * max(1, head[24] // 8), limits)
    elif head[:4] in TIFF_MAGICS and Path(name).suffix.lower() not in RAW_SUFFIXES | HIS_SUFFIXES:
        fh.seek(0)
        with _tiff_errors(name), tifffile.TiffFile(fh, name=name) as tif:
            _check_tiff_header(tif, name, size, limits)


def _check_tiff_header(tif: tifffile.TiffFile, name: str, size: int, limits: ReadLimits) -> tifffile.TiffPage:
    """One page of a size within ``limits``, whose image data lies within the file's ``size`` bytes."""
    if len(tif.pages) == 0:
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"{name} has a TIFF header but no readable page")
    if len(tif.series) != 1 or len(tif.pages) != 1:
        raise FrameError(
            Stage.READ,
            Reason.UNSUPPORTED,
            f"{name} holds {len(tif.pages)} pages; split it into one frame per file",
        )
    page = tif.pages.first
    shape = tuple(int(n) for n in page.shape)
    check_shape(name, shape, limits)
    check_decoded(name, int(np.prod(page.shaped)) * page.dtype.itemsize if page.dtype else 0, limits)
    _check_tiff_complete(name, page, size)
    return page


def _read_tiff(data: bytes, name: str, limits: ReadLimits) -> Frame:
    # The buffer is closed explicitly: tifffile's objects form reference cycles that would keep a
    # bad file's bytes resident until the cyclic collector happens to run.
    buffer = io.BytesIO(data)
    try:
        with _tiff_errors(name), tifffile.TiffFile(buffer) as tif:
            page = _check_tiff_header(tif, name, len(data), limits)
            pixels = page.asarray()
            tags = _carried_tags(page)
    finally:
        buffer.close()
    return Frame(pixels=np.ascontiguousarray(pixels), format="tiff", tags=tags)


@contextmanager
def _tiff_errors(name: str) -> Iterator[None]:
    """Whatever tifffile or a codec raises for a damaged file, as a :class:`FrameError` with a reason."""
    try:
        yield
    except FrameError:
        raise
    except (
        tifffile.TiffFileError,
        ValueError,
        OSError,
        struct.error,
        IndexError,
        KeyError,
        RuntimeError,
        MemoryError,
    ) as exc:
        reason = Reason.TRUNCATED if "truncat" in str(exc).lower() else Reason.UNREADABLE
        raise FrameError(Stage.READ, reason, f"cannot decode TIFF {name}: {exc}") from exc
    except Exception as exc:  # codec errors from imagecodecs have their own classes
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"cannot decode TIFF {name}: {exc}") from exc


def _tiff_data_end(page: tifffile.TiffPage) -> int:
    """The byte offset where the page's last image data ends."""
    return max((o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)), default=0)


def _check_tiff_complete(name: str, page: tifffile.TiffPage, size: int) -> None:
    end = _tiff_data_end(page)
    if end > size or 0 in page.databytecounts:
        raise FrameError(
            Stage.READ, Reason.TRUNCATED, f"{name} is truncated: image data runs to byte {end}, file has {size}"
        )


def _carried_tags(page: tifffile.TiffPage) -> dict[str, object]:
    tags: dict[str, object] = {}
    for name in ("XResolution", "YResolution", "ResolutionUnit", "ImageDescription", "Software", "DateTime"):
        tag = page.tags.get(name)
        if tag is not None:
            tags[name] = tag.value
    return tags


def _png_size(data: bytes, name: str) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"{name} has no PNG header")
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def _ends_with_iend(tail: bytes) -> bool:
    return len(tail) >= 12 and tail[-12:][4:8] == b"IEND"


def _png_file_complete(fh: BinaryIO, size: int) -> bool:
    if size < 12:
        return False
    fh.seek(-12, 2)
    return _ends_with_iend(fh.read(12))


def png_complete(path: Path) -> bool:
    """A PNG is complete when its last chunk, IEND, has been written (a regular file only)."""
    try:
        fd = open_regular(path)
    except FrameError:
        return False
    with os.fdopen(fd, "rb") as fh:
        return _png_file_complete(fh, os.fstat(fh.fileno()).st_size)


#: Samples per pixel of each PNG colour type (gray, RGB, palette, gray+alpha, RGBA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _read_png(data: bytes, name: str, limits: ReadLimits) -> Frame:
    height, width = _png_size(data, name)
    check_shape(name, (height, width), limits)
    bit_depth, colour = data[24], data[25]
    check_decoded(name, height * width * _PNG_CHANNELS.get(colour, 4) * max(1, bit_depth // 8), limits)
    if not _ends_with_iend(data):
        raise FrameError(Stage.READ, Reason.TRUNCATED, f"{name} is truncated: no IEND chunk")
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"cannot decode PNG {name}")
    check_shape(name, tuple(pixels.shape), limits)
    return Frame(pixels=pixels, format="png")


def looks_complete(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> bool:
    """Cheap test, without decoding pixels, that a file is a whole image and not one being written.

    Used by the watcher before claiming; a file that fails here stays in the inbox and is
    looked at again, while a file that is stable but never completes is claimed after all
    and fails in :func:`read_frame` with a reason file. Only a regular file is opened. A file
    over ``limits`` counts as complete: the reader refuses it with a reason, without reading it.
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
            if has_dicom_marker(head):
                fh.seek(0)
                return dicom_complete(fh.read(size), limits)
            suffix = Path(path).suffix.lower()
            if suffix in HIS_SUFFIXES:
                return his_complete(head, size)
            if suffix in RAW_SUFFIXES:
                return True  # nothing to tell a whole file by: the size is checked on reading
            if head.startswith(PNG_SIGNATURE):
                return _png_file_complete(fh, size)
            fh.seek(0)
            with tifffile.TiffFile(fh, name=Path(path).name) as tif:
                end = _tiff_data_end(tif.pages.first)
                return 0 < end <= size
    except Exception:  # noqa: BLE001 - anything unparsable is "not complete yet"
        return False
