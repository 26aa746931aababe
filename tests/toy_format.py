"""A toy frame format in one file, as a new format is written: its functions and its FrameFormat.

A ``.toy`` file is the magic ``TOYF``, the width and height (little-endian uint16 each), then
``width * height`` little-endian uint16 pixels. The registry test (``test_reader_registry.py``)
registers it beside the real formats, as one entry in ``drdaemon.io.readers.registry.FRAME_FORMATS``
would.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np

from drdaemon.errors import FrameError, Reason, Stage
from drdaemon.io.limits import ReadLimits, check_decoded, check_shape
from drdaemon.io.readers import Frame, FrameFormat

MAGIC = b"TOYF"
HEADER = struct.Struct("<4sHH")


def encode_toy(pixels: np.ndarray) -> bytes:
    """A ``.toy`` file of a 2-D uint16 frame."""
    height, width = pixels.shape
    return HEADER.pack(MAGIC, width, height) + pixels.astype("<u2").tobytes()


def recognises(head: bytes, suffix: str) -> bool:
    return head.startswith(MAGIC)


def _geometry(head: bytes, name: str, limits: ReadLimits) -> tuple[int, int]:
    if len(head) < HEADER.size:
        raise FrameError(Stage.READ, Reason.TRUNCATED, f"{name} is truncated: no whole .toy header")
    _, width, height = HEADER.unpack_from(head)
    check_shape(name, (height, width), limits)
    check_decoded(name, width * height * 2, limits)
    return height, width


def check_header(fh: BinaryIO, head: bytes, name: str, size: int, limits: ReadLimits) -> None:
    _geometry(head, name, limits)


def complete(fh: BinaryIO, head: bytes, size: int, limits: ReadLimits) -> bool:
    _, width, height = HEADER.unpack_from(head)
    return size >= HEADER.size + width * height * 2


def decode(data: bytes, name: str, limits: ReadLimits) -> Frame:
    height, width = _geometry(data, name, limits)
    expected = HEADER.size + width * height * 2
    if len(data) < expected:
        raise FrameError(Stage.READ, Reason.TRUNCATED, f"{name} is truncated: {len(data)} bytes, {expected} promised")
    pixels = np.frombuffer(data, "<u2", width * height, HEADER.size).reshape(height, width).astype(np.uint16)
    return Frame(pixels=pixels, format="toy")


TOY = FrameFormat(
    name="toy",
    title="toy (a test's made-up format)",
    suffixes=(".toy",),
    recognised_by="its TOYF magic",
    reads="one uint16 frame",
    recognises=recognises,
    decode=decode,
    complete=complete,
    check_header=check_header,
)
