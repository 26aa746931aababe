"""TIFF frames (classic and BigTIFF, tiled, compressed): recognised by their signature.

One page of one gray channel; a multi-page file is refused as ``unsupported``. The header is
checked from the open file before the whole read: page count, shape and decoded size against
the limits, and image data that lies within the file (else ``truncated``).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
import tifffile

from drdaemon.errors import FrameError, Reason, Stage
from drdaemon.io.limits import ReadLimits, check_decoded, check_shape
from drdaemon.io.readers.base import Frame, FrameFormat

TIFF_SUFFIXES = (".tif", ".tiff")
#: Classic TIFF and BigTIFF, little- and big-endian.
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: The tags copied to the output.
CARRIED_TAGS = ("XResolution", "YResolution", "ResolutionUnit", "ImageDescription", "Software", "DateTime")


def recognises(head: bytes, suffix: str) -> bool:
    return head[:4] in TIFF_MAGICS


def check_header(fh: BinaryIO, head: bytes, name: str, size: int, limits: ReadLimits) -> None:
    fh.seek(0)
    with _tiff_errors(name), tifffile.TiffFile(fh, name=name) as tif:
        _check_tiff_header(tif, name, size, limits)


def complete(fh: BinaryIO, head: bytes, size: int, limits: ReadLimits) -> bool:
    """Whole once the page's last image data lies within the file."""
    fh.seek(0)
    with tifffile.TiffFile(fh, name="file") as tif:
        end = _tiff_data_end(tif.pages.first)
        return 0 < end <= size


def decode(data: bytes, name: str, limits: ReadLimits) -> Frame:
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
    for name in CARRIED_TAGS:
        tag = page.tags.get(name)
        if tag is not None:
            tags[name] = tag.value
    return tags


TIFF = FrameFormat(
    name="tiff",
    title="TIFF",
    suffixes=TIFF_SUFFIXES,
    recognised_by="its II*/MM* signature (classic, BigTIFF)",
    reads="one page: 8/16-bit, float32, tiled, compressed (imagecodecs)",
    recognises=recognises,
    decode=decode,
    complete=complete,
    check_header=check_header,
)
