"""Reading DR frames from disk: TIFF (classic, BigTIFF, tiled, compressed), PNG, DICOM/DICONDE
and detector raw frames (``.raw`` with a configured layout, ``.his``).

A frame is one 2-D single-channel image. Multi-page and multi-channel files are refused
with :class:`~drdaemon.errors.Reason.UNSUPPORTED` rather than guessed at: a DR station
writes one gray frame per file, and anything else needs a human to look at it. Sizes are
checked from the header before any pixel is decoded, so a corrupt header that claims a
gigapixel cannot exhaust memory.

Each format is one module of this package (``dicom``, ``his``, ``raw``, ``png``, ``tiff``)
giving a :class:`FrameFormat`; the registry (:mod:`.registry`, :data:`FRAME_FORMATS`) lists them
in the order a file is recognised (DICOM's ``DICM`` marker first, since a DICOM preamble may
hold a TIFF header; ``.his`` and ``.raw`` by suffix; then the PNG and TIFF signatures), and its
docstring says how to add a format. The reading functions (:mod:`.reading`) dispatch through it.
"""

from __future__ import annotations

from drdaemon.io.limits import DEFAULT_LIMITS, ReadLimits
from drdaemon.io.readers.base import HEAD_BYTES, SUPPORTED_DTYPES, Frame, FrameFormat
from drdaemon.io.readers.reading import (
    DicomError,
    check_header,
    decode_frame,
    file_kind,
    full_range_u16,
    looks_complete,
    open_regular,
    read_dicom,
    read_frame,
    read_frame_bytes,
    read_frame_file,
    read_pixels,
    read_regular,
    recognised_file,
)
from drdaemon.io.readers.registry import FRAME_FORMATS, ReaderRegistry

__all__ = [
    "DEFAULT_LIMITS",
    "FRAME_FORMATS",
    "HEAD_BYTES",
    "SUPPORTED_DTYPES",
    "DicomError",
    "Frame",
    "FrameFormat",
    "ReadLimits",
    "ReaderRegistry",
    "check_header",
    "decode_frame",
    "file_kind",
    "full_range_u16",
    "looks_complete",
    "open_regular",
    "read_dicom",
    "read_frame",
    "read_frame_bytes",
    "read_frame_file",
    "read_pixels",
    "read_regular",
    "recognised_file",
]
