"""PNG frames (8/16-bit gray), recognised by their signature; whole once the IEND chunk is written."""

from __future__ import annotations

import struct
from typing import BinaryIO

import cv2
import numpy as np

from drdaemon.errors import FrameError, Reason, Stage
from drdaemon.io.limits import ReadLimits, check_decoded, check_shape
from drdaemon.io.readers.base import Frame, FrameFormat

PNG_SUFFIXES = (".png",)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Samples per pixel of each PNG colour type (gray, RGB, palette, gray+alpha, RGBA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def recognises(head: bytes, suffix: str) -> bool:
    return head.startswith(PNG_SIGNATURE)


def check_header(fh: BinaryIO, head: bytes, name: str, size: int, limits: ReadLimits) -> None:
    _check_size(head, name, limits)


def complete(fh: BinaryIO, head: bytes, size: int, limits: ReadLimits) -> bool:
    """Whole once its last chunk, IEND, has been written."""
    if size < 12:
        return False
    fh.seek(-12, 2)
    return _ends_with_iend(fh.read(12))


def decode(data: bytes, name: str, limits: ReadLimits) -> Frame:
    _check_size(data, name, limits)
    if not _ends_with_iend(data):
        raise FrameError(Stage.READ, Reason.TRUNCATED, f"{name} is truncated: no IEND chunk")
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"cannot decode PNG {name}")
    check_shape(name, tuple(pixels.shape), limits)
    return Frame(pixels=pixels, format="png")


def _check_size(head: bytes, name: str, limits: ReadLimits) -> None:
    """The IHDR's size and the bytes it decodes to, against ``limits``."""
    height, width = _png_size(head, name)
    check_shape(name, (height, width), limits)
    bit_depth, colour = head[24], head[25]
    check_decoded(name, height * width * _PNG_CHANNELS.get(colour, 4) * max(1, bit_depth // 8), limits)


def _png_size(data: bytes, name: str) -> tuple[int, int]:
    if len(data) < 26 or data[12:16] != b"IHDR":
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"{name} has no PNG header")
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def _ends_with_iend(tail: bytes) -> bool:
    return len(tail) >= 12 and tail[-12:][4:8] == b"IEND"


PNG = FrameFormat(
    name="png",
    title="PNG",
    suffixes=PNG_SUFFIXES,
    recognised_by="its signature",
    reads="8/16-bit gray",
    recognises=recognises,
    decode=decode,
    complete=complete,
    check_header=check_header,
)
