"""Headerless ``.raw`` detector frames, recognised by their suffix, laid out as ``[input.raw]`` says
(the codec is :mod:`drdaemon.io.raw`).

Raw pixels may start like anything (a PNG or TIFF signature included), so the suffix decides,
before any signature format. Nothing tells a whole file from a partial one: the size is
checked on reading (shorter ``truncated``, longer ``unsupported``).
"""

from __future__ import annotations

from typing import BinaryIO

from drdaemon.io.limits import ReadLimits
from drdaemon.io.raw import RAW_SUFFIXES, decode_raw
from drdaemon.io.readers.base import Frame, FrameFormat


def recognises(head: bytes, suffix: str) -> bool:
    return suffix in RAW_SUFFIXES


def complete(fh: BinaryIO, head: bytes, size: int, limits: ReadLimits) -> bool:
    return True  # nothing to tell a whole file by: the size is checked on reading


def decode(data: bytes, name: str, limits: ReadLimits) -> Frame:
    pixels, geometry = decode_raw(data, name, limits)
    return Frame(pixels=pixels, format="raw", raw=geometry)


RAW = FrameFormat(
    name="raw",
    title=".raw (headerless)",
    suffixes=tuple(sorted(RAW_SUFFIXES)),
    recognised_by="its suffix",
    reads=(
        "headerless, one frame of the configured layout; shorter: `truncated`, longer: `unsupported`; "
        "without `[input.raw]`: `unsupported`"
    ),
    recognises=recognises,
    decode=decode,
    complete=complete,
    self_describing=False,
    options="`[input.raw]`",
)
