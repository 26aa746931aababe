"""Output formats: how an enhanced frame becomes the bytes of its output file and its preview.

An :class:`OutputFormat` is everything the commit needs to know about a format, and the only
place that knows it:

* ``name``: the value of ``output.format`` in the config that selects it;
* ``suffix``: the output's file suffix (``.tif``), which also names the sidecar
  (``<output>.json``);
* ``compression``: what the sidecar records as ``output.compression``;
* ``kept_tags``: the input tags (as :mod:`drdaemon.io.readers` reads them) it carries over;
* ``encode(pixels, tags) -> bytes``: the whole output file, in memory, so that the bytes
  written are the bytes hashed for the sidecar without reading the file back;
* ``preview(pixels) -> bytes``: the 8-bit PNG preview (``preview_suffix``), the same for
  every format unless a format has a better one.

A second format is one new class here and one new name in :func:`output_format` and in the
``output.format`` choices of :class:`drdaemon.config.OutputConfig`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import cv2
import numpy as np
import tifffile

#: Long side of the PNG preview in pixels; a preview is for a glance, not for diagnosis.
PREVIEW_MAX_SIDE = 1024
#: The preview's suffix, the same for every output format (``frame.preview.png``).
PREVIEW_SUFFIX = ".preview.png"

_COMPRESSION: dict[str, str | None] = {"none": None, "zstd": "zstd", "deflate": "deflate"}


class OutputFormat(Protocol):
    """What the commit and ``drdaemon enhance`` use to turn an enhanced frame into files."""

    @property
    def name(self) -> str: ...
    @property
    def suffix(self) -> str: ...
    @property
    def preview_suffix(self) -> str: ...
    @property
    def compression(self) -> str: ...
    @property
    def kept_tags(self) -> tuple[str, ...]: ...

    def encode(self, pixels: np.ndarray, tags: Mapping[str, object] | None = None) -> bytes:
        """The whole output file for a uint16 frame; ``tags`` are the input's (only ``kept_tags`` count)."""
        ...

    def preview(self, pixels: np.ndarray) -> bytes:
        """An 8-bit preview image of the enhanced frame."""
        ...


@dataclass(frozen=True)
class TiffOutput:
    """A single-page uint16 TIFF with the input's resolution, description and software tags."""

    compression: str = "zstd"
    name: ClassVar[str] = "tiff"
    suffix: ClassVar[str] = ".tif"
    preview_suffix: ClassVar[str] = PREVIEW_SUFFIX
    kept_tags: ClassVar[tuple[str, ...]] = (
        "XResolution",
        "YResolution",
        "ResolutionUnit",
        "ImageDescription",
        "Software",
    )

    def __post_init__(self) -> None:
        if self.compression not in _COMPRESSION:
            raise ValueError(f"unknown compression {self.compression!r}; expected one of {', '.join(_COMPRESSION)}")

    def encode(self, pixels: np.ndarray, tags: Mapping[str, object] | None = None) -> bytes:
        return encode_tiff_u16(pixels, tags, self.compression)

    def preview(self, pixels: np.ndarray) -> bytes:
        return encode_preview_png(pixels)


def output_format(name: str = "tiff", compression: str = "zstd") -> OutputFormat:
    """The format that ``output.format`` names, with ``output.compression``."""
    if name == "tiff":
        return TiffOutput(compression)
    raise ValueError(f"unknown output format {name!r}; expected tiff")


def encode_tiff_u16(
    pixels: np.ndarray, tags: Mapping[str, object] | None = None, compression: str = "zstd"
) -> bytes:
    """A single-page uint16 TIFF of ``pixels`` with the input's resolution and description tags.

    Compressed outputs use horizontal-difference prediction, which roughly halves the size of
    smooth 16-bit images at little cost; compression runs on two threads.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D frame, got shape {pixels.shape}")
    if compression not in _COMPRESSION:
        raise ValueError(f"unknown compression {compression!r}; expected one of {', '.join(_COMPRESSION)}")
    codec = _COMPRESSION[compression]
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        np.ascontiguousarray(pixels, dtype=np.uint16),
        photometric="minisblack",
        compression=codec,
        predictor=True if codec else None,
        maxworkers=2 if codec else 1,
        metadata=None,  # no tifffile JSON description: the input's description is kept instead
        **_tiff_tag_arguments(tags or {}),
    )
    return buffer.getvalue()


def _tiff_tag_arguments(tags: Mapping[str, object]) -> dict[str, Any]:
    """Translate tags read by :mod:`drdaemon.io.readers` into ``tifffile.imwrite`` arguments."""
    arguments: dict[str, Any] = {}
    if "XResolution" in tags and "YResolution" in tags:
        arguments["resolution"] = (tags["XResolution"], tags["YResolution"])
        if "ResolutionUnit" in tags:
            arguments["resolutionunit"] = tags["ResolutionUnit"]
    for tag, argument in (("ImageDescription", "description"), ("Software", "software")):
        value = tags.get(tag)
        if isinstance(value, str) and value:
            arguments[argument] = value
    return arguments


def encode_preview_png(pixels: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """An 8-bit PNG of a uint16 frame, shrunk so its long side is at most ``max_side``."""
    height, width = pixels.shape
    scale = min(1.0, max_side / max(height, width))
    small = pixels
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".png", (small >> 8).astype(np.uint8))
    if not ok:
        raise ValueError("PNG encoder refused the preview")
    return bytes(encoded.tobytes())


__all__ = [
    "PREVIEW_MAX_SIDE",
    "PREVIEW_SUFFIX",
    "OutputFormat",
    "TiffOutput",
    "encode_preview_png",
    "encode_tiff_u16",
    "output_format",
]
