"""What the readers accept: size limits checked from headers, and the layout of headerless raw frames.

Kept apart from the format readers so that each of them (TIFF/PNG, DICOM, raw) checks a
frame against the same limits, with the same reasons, before decoding a single pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drdaemon import defaults
from drdaemon.errors import FrameError, Reason, Stage

RawDtype = Literal["uint8", "uint16", "float32"]


@dataclass(frozen=True)
class RawLayout:
    """How a headerless ``.raw`` detector frame is laid out (``[input.raw]``)."""

    width: int
    height: int
    dtype: RawDtype = "uint16"
    byte_order: Literal["little", "big"] = "little"
    header_bytes: int = 0


@dataclass(frozen=True)
class ReadLimits:
    """Sizes above which a frame fails as ``too_large`` before any pixel is decoded (``[input]``)."""

    max_pixels: int = defaults.MAX_PIXELS
    max_bytes: int = defaults.MAX_BYTES
    #: The geometry of ``.raw`` frames; None: ``.raw`` files fail as unsupported, naming the table.
    raw: RawLayout | None = None
    #: Bytes the decoded pixels may take; None: ``max_bytes``. Checked from the header, so a
    #: small compressed file that would decode to gigabytes fails without the allocation.
    max_decoded_bytes: int | None = None

    @property
    def decoded_limit(self) -> int:
        return self.max_decoded_bytes if self.max_decoded_bytes is not None else self.max_bytes


#: The limits of a default ``[input]`` table, for callers without a configuration.
DEFAULT_LIMITS = ReadLimits()


def check_size(name: str, size: int, limits: ReadLimits) -> None:
    """A file's byte count against ``input.max_bytes`` (and the empty file)."""
    if size == 0:
        raise FrameError(Stage.READ, Reason.EMPTY, f"{name} is empty (0 bytes)")
    if size > limits.max_bytes:
        raise FrameError(
            Stage.READ, Reason.TOO_LARGE, f"{name} has {size} bytes, more than input.max_bytes={limits.max_bytes}"
        )


def check_shape(name: str, shape: tuple[int, ...], limits: ReadLimits) -> None:
    """A header's claimed frame shape against ``input.max_pixels``: one 2-D gray frame, not empty."""
    if len(shape) != 2:
        raise FrameError(
            Stage.READ, Reason.UNSUPPORTED, f"{name} has shape {shape}; only single-channel 2-D frames are enhanced"
        )
    if min(shape) == 0:
        raise FrameError(Stage.READ, Reason.EMPTY, f"{name} has zero size {shape}")
    if shape[0] * shape[1] > limits.max_pixels:
        raise FrameError(
            Stage.READ,
            Reason.TOO_LARGE,
            f"{name} claims {shape[0]}x{shape[1]} pixels, more than input.max_pixels={limits.max_pixels}",
        )


def check_decoded(name: str, decoded: int, limits: ReadLimits) -> None:
    """The bytes a header says the decoded pixels take against ``input.max_decoded_bytes`` (or ``max_bytes``)."""
    if decoded > limits.decoded_limit:
        key = "input.max_decoded_bytes" if limits.max_decoded_bytes is not None else "input.max_bytes"
        raise FrameError(
            Stage.READ,
            Reason.TOO_LARGE,
            f"{name} would decode to {decoded} bytes, more than {key}={limits.decoded_limit}",
        )


def refuse_frames(name: str, frames: int, what: str) -> None:
    """Multi-frame objects are refused: one file is one frame, as the lifecycle and sidecar assume."""
    if frames != 1:
        raise FrameError(
            Stage.READ,
            Reason.UNSUPPORTED if frames > 1 else Reason.EMPTY,
            f"{name} is a {what} with {frames} frames; only single-frame files are enhanced",
        )


__all__ = [
    "DEFAULT_LIMITS",
    "RawDtype",
    "RawLayout",
    "ReadLimits",
    "check_decoded",
    "check_shape",
    "check_size",
    "refuse_frames",
]
