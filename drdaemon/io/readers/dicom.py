"""DICOM and DICONDE frames, recognised by the ``DICM`` marker whatever their name (the codec is
:mod:`drdaemon.io.dicom`).

A DICOM preamble may hold a TIFF header (some CR writers put one there), so this format comes
first in the registry. A ``.dcm`` or ``.dicom`` file without the marker is unreadable, saying so.
The header is checked once the file is read (it is small next to its pixels, and a deflated
data set is inflated within bounds there).
"""

from __future__ import annotations

from typing import BinaryIO

from drdaemon.io.dicom import DICOM_SUFFIXES, decode_dicom, dicom_complete, has_dicom_marker
from drdaemon.io.limits import ReadLimits
from drdaemon.io.readers.base import Frame, FrameFormat


def recognises(head: bytes, suffix: str) -> bool:
    return has_dicom_marker(head)


def complete(fh: BinaryIO, head: bytes, size: int, limits: ReadLimits) -> bool:
    """Whole once its header parses and its pixel data is all there."""
    fh.seek(0)
    return dicom_complete(fh.read(size), limits)


def decode(data: bytes, name: str, limits: ReadLimits) -> Frame:
    pixels, source = decode_dicom(data, name, limits)
    return Frame(pixels=pixels, format="dicom", dicom=source)


DICOM = FrameFormat(
    name="dicom",
    title="DICOM/DICONDE",
    suffixes=tuple(sorted(DICOM_SUFFIXES)),
    recognised_by="DICM after the 128-byte preamble, whatever the preamble holds",
    reads=(
        "single frame, gray MONOCHROME1/2, 8-16 stored bits; uncompressed, deflate and RLE with pydicom alone; "
        "JPEG 2000, JPEG-LS with `pip install 'drdaemon[dicom]'`"
    ),
    recognises=recognises,
    decode=decode,
    complete=complete,
    misnamed="has no DICM marker after a 128-byte preamble",
    options="`[watch] patterns` for files without a suffix",
)
