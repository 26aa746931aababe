"""Varex/PerkinElmer ``.his`` frames, recognised by their suffix; geometry from their own header
(the codec is :mod:`drdaemon.io.raw`).

Like ``.raw``, the suffix decides before any signature format. A file is whole once it holds
every frame its header promises; the header (68 bytes) is checked when the file is decoded.
"""

from __future__ import annotations

from typing import BinaryIO

from drdaemon.io.limits import ReadLimits
from drdaemon.io.raw import HIS_SUFFIXES, decode_his, his_complete
from drdaemon.io.readers.base import Frame, FrameFormat


def recognises(head: bytes, suffix: str) -> bool:
    return suffix in HIS_SUFFIXES


def complete(fh: BinaryIO, head: bytes, size: int, limits: ReadLimits) -> bool:
    return his_complete(head, size)


def decode(data: bytes, name: str, limits: ReadLimits) -> Frame:
    pixels, geometry = decode_his(data, name, limits)
    return Frame(pixels=pixels, format="his", raw=geometry)


HIS = FrameFormat(
    name="his",
    title=".his (Varex/PerkinElmer)",
    suffixes=tuple(sorted(HIS_SUFFIXES)),
    recognised_by="its suffix",
    reads=(
        "file id 0x7000; geometry, frame count and number type from its own header; one frame "
        "(uint8, uint16, float32); stacks `unsupported`"
    ),
    recognises=recognises,
    decode=decode,
    complete=complete,
)
