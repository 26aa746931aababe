"""What reading gives (:class:`Frame`) and what a frame format is (:class:`FrameFormat`).

A format module (``tiff.py``, ``png.py``, ``dicom.py``, ``raw.py``, ``his.py`` beside this one)
builds one :class:`FrameFormat` value; :mod:`drdaemon.io.readers.registry` lists them in the
order a file is recognised.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from drdaemon.io.dicom import DicomSource
from drdaemon.io.limits import ReadLimits
from drdaemon.io.raw import RawGeometry

#: Bytes enough to recognise every format by its signature (the DICOM marker ends at 132).
HEAD_BYTES = 132
#: The pixel types the engines take; a decoder giving any other is refused as ``unsupported``.
SUPPORTED_DTYPES = {np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SUFFIX = re.compile(r"^\.[a-z0-9_]+$")


@dataclass
class Frame:
    """A decoded frame and the metadata worth carrying to its output."""

    pixels: np.ndarray
    #: The name of the :class:`FrameFormat` that read it ("tiff", "png", "dicom", "raw", "his", ...);
    #: the sidecar records it as ``input.format``.
    format: str
    #: TIFF tags copied to the output: resolution, resolution unit, description, software.
    tags: dict[str, object] = field(default_factory=dict)
    #: The header of a DICOM input, from which a DICOM output is derived.
    dicom: DicomSource | None = None
    #: The geometry a ``.raw`` or ``.his`` frame was read with.
    raw: RawGeometry | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)


#: Whether a file is this format: ``(head, suffix)``, the file's first :data:`HEAD_BYTES` bytes
#: (fewer for a shorter file) and its suffix in lower case (``""`` for none).
Recognises = Callable[[bytes, str], bool]
#: The whole file in memory, its name (for messages) and the limits -> the frame, or FrameError.
Decoder = Callable[[bytes, str, ReadLimits], Frame]
#: ``(file, head, size, limits)`` -> whether the file is whole (not still being written); may
#: raise anything, which counts as "not complete yet". ``file`` is open for reading, anywhere.
CompleteCheck = Callable[[BinaryIO, bytes, int, ReadLimits], bool]
#: ``(file, head, name, size, limits)``: refuse (FrameError) a header that claims too much before
#: the whole file is read. ``file`` is open for reading, anywhere.
HeaderCheck = Callable[[BinaryIO, bytes, str, int, ReadLimits], None]


def no_header_check(fh: BinaryIO, head: bytes, name: str, size: int, limits: ReadLimits) -> None:
    """For a format whose decoder checks its header (the file is small next to its pixels) or that has none."""


@dataclass(frozen=True)
class FrameFormat:
    """One input format: how a file is recognised, when it is whole, how it is checked and decoded."""

    #: Lower-case name, ``Frame.format`` and the sidecar's ``input.format``.
    name: str
    #: What a user calls it (messages, the frame formats reference page).
    title: str
    #: Lower-case suffixes with their dot; the watch patterns, the evaluation's and the trainer's
    #: listings take them (both spellings, ``.tif`` and ``.TIF``, where a pattern is case-sensitive).
    suffixes: tuple[str, ...]
    #: How :attr:`recognises` tells the format, in words (messages, the reference page).
    recognised_by: str
    #: What is read, in words (the reference page).
    reads: str
    recognises: Recognises
    decode: Decoder
    complete: CompleteCheck
    check_header: HeaderCheck = no_header_check
    #: Why a file with one of :attr:`suffixes` that this format does not recognise is unreadable
    #: (after the file's name, e.g. "has no DICM marker ..."); None: the message naming every format.
    misnamed: str | None = None
    #: Whether a file is read without any configuration (``[input.raw]`` is one): the trainer,
    #: which has no ``[input]`` table, lists only such formats.
    self_describing: bool = True
    #: The configuration that concerns it, in words (the reference page).
    options: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"frame format name {self.name!r}: lower-case letters, digits and _ only")
        bad = [suffix for suffix in self.suffixes if not _SUFFIX.match(suffix)]
        if bad or not self.suffixes:
            raise ValueError(
                f"frame format {self.name!r}: suffixes {bad or '()'}; give at least one, lower case with its dot"
            )
