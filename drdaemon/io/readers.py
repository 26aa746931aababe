"""Reading DR frames from disk: TIFF (classic, BigTIFF, tiled, compressed) and PNG.

A frame is one 2-D single-channel image. Multi-page and multi-channel files are refused
with :class:`~drdaemon.errors.Reason.UNSUPPORTED` rather than guessed at: a DR station
writes one gray frame per file, and anything else needs a human to look at it. Sizes are
checked from the header before any pixel is decoded, so a corrupt header that claims a
gigapixel cannot exhaust memory.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import tifffile

from drdaemon import defaults
from drdaemon.errors import FrameError, Reason, Stage

TIFF_SUFFIXES = {".tif", ".tiff"}
PNG_SUFFIXES = {".png"}
SUPPORTED_DTYPES = {np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ReadLimits:
    """Sizes above which a frame fails as ``too_large`` before any pixel is decoded (``[input]``)."""

    max_pixels: int = defaults.MAX_PIXELS
    max_bytes: int = defaults.MAX_BYTES
    #: Bytes the decoded pixels may take; None: ``max_bytes``. Checked from the header, so a
    #: small compressed file that would decode to gigabytes fails without the allocation.
    max_decoded_bytes: int | None = None

    @property
    def decoded_limit(self) -> int:
        return self.max_decoded_bytes if self.max_decoded_bytes is not None else self.max_bytes


@dataclass
class Frame:
    """A decoded frame and the metadata worth carrying to its output."""

    pixels: np.ndarray
    format: str  # "tiff" or "png"
    #: TIFF tags copied to the output: resolution, resolution unit, description, software.
    tags: dict[str, object] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)


def read_frame(path: Path, limits: ReadLimits = ReadLimits()) -> Frame:
    """Decode ``path`` into a :class:`Frame`, or raise :class:`FrameError` saying why not."""
    return read_frame_bytes(path, limits)[0]


def read_frame_bytes(path: Path, limits: ReadLimits = ReadLimits()) -> tuple[Frame, bytes]:
    """Read ``path`` once and decode it from memory; the bytes come back for hashing.

    The daemon hashes exactly the bytes it decoded, so a frame is never read twice.
    """
    frame, data, _ = read_frame_file(path, limits)
    return frame, data


def read_frame_file(path: Path, limits: ReadLimits = ReadLimits()) -> tuple[Frame, bytes, os.stat_result]:
    """Like :func:`read_frame_bytes`, with the file's status as it was when read (to detect change)."""
    path = Path(path)
    data, status = read_regular(path, limits)
    return decode_frame(data, path.name, limits), data, status


_KINDS = {stat.S_IFLNK: "a symbolic link", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory"}


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
            raise FrameError(Stage.READ, Reason.UNSUPPORTED,
                             f"{name} is {kind}; only regular files are read") from exc
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"cannot open {name}: {exc}") from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise FrameError(Stage.READ, Reason.UNSUPPORTED, f"{name} is {file_kind(mode)}; only regular files are read")
    return fd


def read_regular(path: Path, limits: ReadLimits = ReadLimits()) -> tuple[bytes, os.stat_result]:
    """The whole content of a regular file, and its status before the read; size-checked first."""
    fd = open_regular(path)
    try:
        status = os.fstat(fd)
        _check_size(Path(path).name, status.st_size, limits)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(status.st_size)  # a file that grows meanwhile is caught by the change check
    except OSError as exc:
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"cannot read {Path(path).name}: {exc}") from exc
    finally:
        os.close(fd)
    return data, status


def decode_frame(data: bytes, name: str, limits: ReadLimits = ReadLimits()) -> Frame:
    """Decode a whole file held in memory; ``name`` is only used in messages."""
    _check_size(name, len(data), limits)
    head = data[:8]
    if head.startswith(PNG_SIGNATURE):
        frame = _read_png(data, name, limits)
    elif head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        frame = _read_tiff(data, name, limits)
    else:
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"{name} is neither a TIFF nor a PNG file")
    _check_pixels(name, frame.pixels)
    return frame


def _check_size(name: str, size: int, limits: ReadLimits) -> None:
    if size == 0:
        raise FrameError(Stage.READ, Reason.EMPTY, f"{name} is empty (0 bytes)")
    if size > limits.max_bytes:
        raise FrameError(Stage.READ, Reason.TOO_LARGE,
                         f"{name} has {size} bytes, more than input.max_bytes={limits.max_bytes}")


def _check_shape(name: str, shape: tuple[int, ...], limits: ReadLimits) -> None:
    if len(shape) != 2:
        raise FrameError(Stage.READ, Reason.UNSUPPORTED,
                         f"{name} has shape {shape}; only single-channel 2-D frames are enhanced")
    if min(shape) == 0:
        raise FrameError(Stage.READ, Reason.EMPTY, f"{name} has zero size {shape}")
    if shape[0] * shape[1] > limits.max_pixels:
        raise FrameError(Stage.READ, Reason.TOO_LARGE,
                         f"{name} claims {shape[0]}x{shape[1]} pixels, more than "
                         f"input.max_pixels={limits.max_pixels}")


def _check_decoded(name: str, decoded: int, limits: ReadLimits) -> None:
    if decoded > limits.decoded_limit:
        key = "input.max_decoded_bytes" if limits.max_decoded_bytes is not None else "input.max_bytes"
        raise FrameError(Stage.READ, Reason.TOO_LARGE,
                         f"{name} would decode to {decoded} bytes, more than {key}={limits.decoded_limit}")


def _check_pixels(name: str, pixels: np.ndarray) -> None:
    if pixels.dtype not in SUPPORTED_DTYPES:
        raise FrameError(Stage.READ, Reason.UNSUPPORTED,
                         f"{name} has dtype {pixels.dtype}; supported are uint8, uint16, float32")


def _read_tiff(data: bytes, name: str, limits: ReadLimits) -> Frame:
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if len(tif.pages) == 0:
                raise FrameError(Stage.READ, Reason.UNREADABLE, f"{name} has a TIFF header but no readable page")
            if len(tif.series) != 1 or len(tif.pages) != 1:
                raise FrameError(Stage.READ, Reason.UNSUPPORTED,
                                 f"{name} holds {len(tif.pages)} pages; split it into one frame per file")
            page = tif.pages.first
            shape = tuple(int(n) for n in page.shape)
            _check_shape(name, shape, limits)
            _check_decoded(name, int(np.prod(page.shaped)) * page.dtype.itemsize if page.dtype else 0, limits)
            _check_tiff_complete(name, page, len(data))
            pixels = page.asarray()
            tags = _carried_tags(page)
    except FrameError:
        raise
    except (tifffile.TiffFileError, ValueError, OSError, struct.error, IndexError, KeyError,
            RuntimeError, MemoryError) as exc:
        reason = Reason.TRUNCATED if "truncat" in str(exc).lower() else Reason.UNREADABLE
        raise FrameError(Stage.READ, reason, f"cannot decode TIFF {name}: {exc}") from exc
    except Exception as exc:  # codec errors from imagecodecs have their own classes
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"cannot decode TIFF {name}: {exc}") from exc
    return Frame(pixels=np.ascontiguousarray(pixels), format="tiff", tags=tags)


def _tiff_data_end(page: tifffile.TiffPage) -> int:
    """The byte offset where the page's last image data ends."""
    return max((o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)), default=0)


def _check_tiff_complete(name: str, page: tifffile.TiffPage, size: int) -> None:
    end = _tiff_data_end(page)
    if end > size or 0 in page.databytecounts:
        raise FrameError(Stage.READ, Reason.TRUNCATED,
                         f"{name} is truncated: image data runs to byte {end}, file has {size}")


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


def png_complete(path: Path) -> bool:
    """A PNG is complete when its last chunk, IEND, has been written."""
    with Path(path).open("rb") as fh:
        fh.seek(0, 2)
        if fh.tell() < 12:
            return False
        fh.seek(-12, 2)
        return _ends_with_iend(fh.read(12))


#: Samples per pixel of each PNG colour type (gray, RGB, palette, gray+alpha, RGBA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _read_png(data: bytes, name: str, limits: ReadLimits) -> Frame:
    height, width = _png_size(data, name)
    _check_shape(name, (height, width), limits)
    bit_depth, colour = data[24], data[25]
    _check_decoded(name, height * width * _PNG_CHANNELS.get(colour, 4) * max(1, bit_depth // 8), limits)
    if not _ends_with_iend(data):
        raise FrameError(Stage.READ, Reason.TRUNCATED, f"{name} is truncated: no IEND chunk")
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"cannot decode PNG {name}")
    _check_shape(name, tuple(pixels.shape), limits)
    return Frame(pixels=pixels, format="png")


def looks_complete(path: Path) -> bool:
    """Cheap test, without decoding pixels, that a file is a whole image and not one being written.

    Used by the watcher before claiming; a file that fails here stays in the inbox and is
    looked at again, while a file that is stable but never completes is claimed after all
    and fails in :func:`read_frame` with a reason file. Only a regular file is opened.
    """
    try:
        fd = open_regular(path)
    except FrameError:
        return False
    try:
        with os.fdopen(fd, "rb") as fh:
            head = fh.read(8)
            if head.startswith(PNG_SIGNATURE):
                size = fh.seek(0, 2)
                if size < 12:
                    return False
                fh.seek(-12, 2)
                return _ends_with_iend(fh.read(12))
            fh.seek(0)
            with tifffile.TiffFile(fh, name=Path(path).name) as tif:
                end = _tiff_data_end(tif.pages.first)
                return 0 < end <= os.fstat(fh.fileno()).st_size
    except Exception:  # noqa: BLE001 - anything unparsable is "not complete yet"
        return False
