"""Reading detector SDK frames: headerless ``.raw`` with a configured layout, and Varex/PerkinElmer ``.his``.

A ``.raw`` file says nothing about itself, so its geometry comes from ``[input.raw]``; a file
whose size does not match that geometry is refused rather than guessed at: shorter is
``truncated``, longer is ``unsupported`` (a multi-frame stack or another detector mode).

A ``.his`` file carries its geometry: a 68-byte file header (file id 0x7000, header sizes,
the bounding rectangle, the frame count and the number type, all little-endian), an image
header of the size it states, then the frames. Single frames are read; a stack of several
frames is refused as unsupported, like a multi-frame DICOM object.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from drdaemon.errors import FrameError, Reason, Stage
from drdaemon.io.limits import RawLayout, ReadLimits, check_decoded, check_shape, refuse_frames

RAW_SUFFIXES = {".raw"}
HIS_SUFFIXES = {".his"}
HIS_FILE_ID = 0x7000
HIS_FILE_HEADER_BYTES = 68
#: The file header up to the number type; the rest of its 68 bytes is padding.
_HIS_HEADER = struct.Struct("<HHHIHHHHHHHdH")
#: The .his number types a detector writes for gray frames, and their numpy dtypes.
HIS_NUMBER_TYPES: dict[int, np.dtype[Any]] = {2: np.dtype("u1"), 4: np.dtype("<u2"), 128: np.dtype("<f4")}


@dataclass(frozen=True)
class RawGeometry:
    """The geometry a raw frame was read with, as the sidecar records it."""

    width: int
    height: int
    dtype: str
    byte_order: str
    header_bytes: int
    frames: int = 1
    source: str = "config"  # "config" ([input.raw]) or "his" (the file's own header)


def _dtype(layout: RawLayout) -> np.dtype:
    return np.dtype(layout.dtype).newbyteorder("<" if layout.byte_order == "little" else ">")


def _pixels(data: bytes, offset: int, geometry: RawGeometry, dtype: np.dtype) -> np.ndarray:
    count = geometry.width * geometry.height
    frame = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(geometry.height, geometry.width)
    return frame.astype(dtype.newbyteorder("="), copy=True)  # native order, writable, detached from the file


def decode_raw(data: bytes, name: str, limits: ReadLimits) -> tuple[np.ndarray, RawGeometry]:
    """A headerless frame laid out as ``[input.raw]`` says; its size must match exactly."""
    layout = limits.raw
    if layout is None:
        raise FrameError(
            Stage.READ,
            Reason.UNSUPPORTED,
            f"{name} is a headerless raw frame; set [input.raw] width, height and dtype to read it",
        )
    check_shape(name, (layout.height, layout.width), limits)
    dtype = _dtype(layout)
    check_decoded(name, layout.width * layout.height * dtype.itemsize, limits)
    expected = layout.header_bytes + layout.width * layout.height * dtype.itemsize
    if len(data) < expected:
        raise FrameError(
            Stage.READ,
            Reason.TRUNCATED,
            f"{name} is truncated: {len(data)} bytes, [input.raw] geometry needs {expected}",
        )
    if len(data) > expected:
        raise FrameError(
            Stage.READ,
            Reason.UNSUPPORTED,
            f"{name} has {len(data)} bytes, more than the {expected} of one [input.raw] frame "
            f"({layout.width}x{layout.height} {layout.dtype}, {layout.header_bytes} header bytes)",
        )
    geometry = RawGeometry(layout.width, layout.height, layout.dtype, layout.byte_order, layout.header_bytes)
    return _pixels(data, layout.header_bytes, geometry, dtype), geometry


def his_geometry(data: bytes, name: str) -> tuple[RawGeometry, np.dtype]:
    """Geometry, frame count and number type from a ``.his`` file header."""
    if len(data) < HIS_FILE_HEADER_BYTES:
        raise FrameError(Stage.READ, Reason.TRUNCATED, f"{name} is truncated: {len(data)} bytes, no whole .his header")
    (
        file_id,
        header_size,
        _version,
        _file_size,
        image_header_size,
        left,
        top,
        right,
        bottom,
        frames,
        _correction,
        _integration_us,
        number_type,
    ) = _HIS_HEADER.unpack_from(data)
    if file_id != HIS_FILE_ID or header_size < HIS_FILE_HEADER_BYTES:
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"{name} has no .his file header (file id {file_id:#06x})")
    if number_type not in HIS_NUMBER_TYPES:
        raise FrameError(
            Stage.READ,
            Reason.UNSUPPORTED,
            f"{name} has .his number type {number_type}; supported are 2 (uint8), 4 (uint16), 128 (float32)",
        )
    if right < left or bottom < top:
        raise FrameError(Stage.READ, Reason.EMPTY, f"{name} has an empty .his image rectangle")
    dtype = HIS_NUMBER_TYPES[number_type]
    geometry = RawGeometry(
        width=right - left + 1,
        height=bottom - top + 1,
        dtype=str(dtype.newbyteorder("=")),
        byte_order="little",
        header_bytes=header_size + image_header_size,
        frames=frames,
        source="his",
    )
    return geometry, dtype


def decode_his(data: bytes, name: str, limits: ReadLimits) -> tuple[np.ndarray, RawGeometry]:
    """One frame of a ``.his`` file, read from its own header."""
    geometry, dtype = his_geometry(data, name)
    check_shape(name, (geometry.height, geometry.width), limits)
    refuse_frames(name, geometry.frames, ".his stack")
    check_decoded(name, geometry.width * geometry.height * dtype.itemsize, limits)
    expected = geometry.header_bytes + geometry.width * geometry.height * dtype.itemsize
    if len(data) < expected:
        raise FrameError(
            Stage.READ, Reason.TRUNCATED, f"{name} is truncated: {len(data)} bytes, its .his header promises {expected}"
        )
    return _pixels(data, geometry.header_bytes, geometry, dtype), geometry


def his_complete(head: bytes, size: int) -> bool:
    """A ``.his`` file is complete once it holds all the frames its header promises."""
    try:
        geometry, dtype = his_geometry(head, "file")
    except FrameError as error:
        return error.reason is not Reason.TRUNCATED  # a file that is no .his fails on reading
    return size >= geometry.header_bytes + geometry.frames * geometry.width * geometry.height * dtype.itemsize


def encode_his(pixels: np.ndarray, image_header_bytes: int = 32, frames: int | None = None) -> bytes:
    """A ``.his`` file of one frame (or a stack ``frames x H x W``): test data and detector simulators."""
    stack = pixels if pixels.ndim == 3 else pixels[None]
    dtype = np.dtype(stack.dtype).newbyteorder("<")
    number_type = next(code for code, kind in HIS_NUMBER_TYPES.items() if kind == dtype)
    count, height, width = stack.shape
    body = stack.astype(dtype).tobytes()
    size = HIS_FILE_HEADER_BYTES + image_header_bytes + len(body)
    header = _HIS_HEADER.pack(
        HIS_FILE_ID,
        HIS_FILE_HEADER_BYTES,
        100,
        size,
        image_header_bytes,
        0,
        0,
        width - 1,
        height - 1,
        count if frames is None else frames,
        0,
        0.0,
        number_type,
    )
    return header.ljust(HIS_FILE_HEADER_BYTES, b"\0") + bytes(image_header_bytes) + body


__all__ = [
    "HIS_SUFFIXES",
    "RAW_SUFFIXES",
    "RawGeometry",
    "decode_his",
    "decode_raw",
    "encode_his",
    "his_complete",
    "his_geometry",
]
