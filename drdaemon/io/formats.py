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

A format that depends on the frame is also :class:`FrameBound`: ``for_frame(frame,
derivation)`` gives the format that one frame is written in (:func:`format_for_frame`).
DICOM binds itself to the frame's DICOM source (the dataset the output is derived from, and
the output's UIDs, fixed before encoding so that the sidecar can name them); ``auto`` picks
DICOM for a DICOM input and TIFF otherwise. TIFF, the same for every frame, needs no binding.

A second format is one new class here and one new name in :func:`output_format` and in the
``output.format`` choices of :class:`drdaemon.config.OutputConfig`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import cv2
import numpy as np
import tifffile

from drdaemon import __version__
from drdaemon.defaults import COMPRESSION
from drdaemon.errors import FrameError, Reason, Stage
from drdaemon.io.dicom import DicomSource
from drdaemon.io.dicom_writer import (
    Derivation,
    DerivedIdentity,
    TransferChoice,
    derived_identity,
    encode_derived_dicom,
)
from drdaemon.io.readers import Frame

if TYPE_CHECKING:
    from drdaemon.config import EngineConfig, OutputConfig

#: Long side of the PNG preview in pixels; a preview is for a glance, not for diagnosis.
PREVIEW_MAX_SIDE = 1024
#: The preview's suffix, the same for every output format (``frame.preview.png``).
PREVIEW_SUFFIX = ".preview.png"

#: ``output.compression`` -> the TIFF Compression code tifffile writes (None: uncompressed).
_COMPRESSION: dict[str, tifffile.COMPRESSION | None] = {
    "none": None,
    "lzw": tifffile.COMPRESSION.LZW,  # 5
    "adobe_deflate": tifffile.COMPRESSION.ADOBE_DEFLATE,  # 8, the code libtiff writes for deflate
    "deflate": tifffile.COMPRESSION.DEFLATE,  # 32946, obsolete; what "deflate" always wrote
    "zstd": tifffile.COMPRESSION.ZSTD,  # 50000
}
#: The output's Software tag: what made its pixels (the input's own Software tag follows it).
SOFTWARE = f"drdaemon {__version__}"


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


@runtime_checkable
class FrameBound(Protocol):
    """An output format whose output depends on the frame's input (its DICOM source)."""

    def for_frame(self, frame: Frame, derivation: Derivation) -> OutputFormat:
        """The format ``frame`` is written in, bound to what it needs of the frame."""
        ...


def format_for_frame(output_format: OutputFormat, frame: Frame, derivation: Derivation) -> OutputFormat:
    """The format ``frame`` is written in under the configured ``output_format``."""
    if isinstance(output_format, FrameBound):
        return output_format.for_frame(frame, derivation)
    return output_format


@dataclass(frozen=True)
class TiffOutput:
    """A single-page uint16 TIFF with the input's resolution and description tags, made by drdaemon."""

    compression: str = COMPRESSION
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


@dataclass(frozen=True)
class DicomOutput:
    """A derived DICOM image of a DICOM input (:mod:`drdaemon.io.dicom_writer`), suffix ``.dcm``.

    Unbound it is the configured format; :meth:`for_frame` binds it to one frame's source,
    derivation and new UIDs. A frame that is not DICOM fails (unsupported): a DICOM output
    is derived from the DICOM object it enhances, which such a frame does not have.
    """

    uid_root: str | None = None
    transfer_syntax: TransferChoice = "explicit"
    #: The engine configuration's hash (one enhanced series per source series and configuration).
    engine_configuration_sha256: str | None = None
    source: DicomSource | None = None
    derivation: Derivation | None = None
    identity: DerivedIdentity | None = None
    name: ClassVar[str] = "dicom"
    suffix: ClassVar[str] = ".dcm"
    preview_suffix: ClassVar[str] = PREVIEW_SUFFIX
    #: No TIFF tags: the whole DICOM dataset of the input is kept instead.
    kept_tags: ClassVar[tuple[str, ...]] = ()

    @property
    def compression(self) -> str:
        """The transfer syntax written, by its DICOM keyword (the sidecar's ``output.compression``)."""
        from pydicom.uid import UID

        return UID(self.identity.transfer_syntax).keyword if self.identity else "ExplicitVRLittleEndian"

    def for_frame(self, frame: Frame, derivation: Derivation) -> DicomOutput:
        if frame.dicom is None:
            raise FrameError(
                Stage.WRITE,
                Reason.UNSUPPORTED,
                f"output.format = 'dicom' needs a DICOM input, got a {frame.format} frame; "
                "'auto' writes TIFF for such frames",
            )
        identity = derived_identity(
            frame.dicom, derivation, self.uid_root, self.transfer_syntax, self.engine_configuration_sha256
        )
        return replace(self, source=frame.dicom, derivation=derivation, identity=identity)

    def encode(self, pixels: np.ndarray, tags: Mapping[str, object] | None = None) -> bytes:
        if self.source is None or self.derivation is None or self.identity is None:
            raise ValueError("a DICOM output is derived from its source: bind it with for_frame first")
        return encode_derived_dicom(self.source, pixels, self.derivation, self.identity)

    def preview(self, pixels: np.ndarray) -> bytes:
        return encode_preview_png(pixels)


@dataclass(frozen=True)
class AutoOutput:
    """DICOM for a DICOM input, TIFF for every other (``output.format = "auto"``)."""

    tiff: TiffOutput
    dicom: DicomOutput
    name: ClassVar[str] = "auto"
    preview_suffix: ClassVar[str] = PREVIEW_SUFFIX

    @property
    def suffix(self) -> str:
        return self.tiff.suffix

    @property
    def compression(self) -> str:
        return self.tiff.compression

    @property
    def kept_tags(self) -> tuple[str, ...]:
        return self.tiff.kept_tags

    def for_frame(self, frame: Frame, derivation: Derivation) -> OutputFormat:
        return self.dicom.for_frame(frame, derivation) if frame.dicom is not None else self.tiff

    def encode(self, pixels: np.ndarray, tags: Mapping[str, object] | None = None) -> bytes:
        return self.tiff.encode(pixels, tags)

    def preview(self, pixels: np.ndarray) -> bytes:
        return encode_preview_png(pixels)


def output_format(
    name: str = "tiff",
    compression: str = COMPRESSION,
    dicom_uid_root: str | None = None,
    dicom_transfer_syntax: TransferChoice = "explicit",
    engine_configuration_sha256: str | None = None,
) -> OutputFormat:
    """The format that ``output.format`` names, with ``output.compression`` and the DICOM options."""
    dicom = DicomOutput(dicom_uid_root, dicom_transfer_syntax, engine_configuration_sha256)
    if name == "tiff":
        return TiffOutput(compression)
    if name == "dicom":
        return dicom
    if name == "auto":
        return AutoOutput(TiffOutput(compression), dicom)
    raise ValueError(f"unknown output format {name!r}; expected auto, tiff or dicom")


def configured_output_format(config: OutputConfig, engine: EngineConfig | None = None) -> OutputFormat:
    """The format of an ``[output]`` table, for frames enhanced as ``[engine]`` says."""
    return output_format(
        config.format,
        config.compression,
        config.dicom_uid_root,
        config.dicom_transfer_syntax,
        None if engine is None else engine.configuration_sha256(),
    )


def encode_tiff_u16(
    pixels: np.ndarray, tags: Mapping[str, object] | None = None, compression: str = COMPRESSION
) -> bytes:
    """A single-page uint16 TIFF of ``pixels`` with the input's resolution and description tags.

    Compressed outputs use horizontal-difference prediction, which roughly halves the size of
    smooth 16-bit images at little cost; compression runs on two threads. The Software tag
    names drdaemon and its version (:data:`SOFTWARE`), followed by the input's own.
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
    description = tags.get("ImageDescription")
    if isinstance(description, str) and description:
        arguments["description"] = description
    station = tags.get("Software")
    has_station = isinstance(station, str) and station and not station.startswith("drdaemon ")
    arguments["software"] = f"{SOFTWARE} (input: {station})" if has_station else SOFTWARE
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
    "SOFTWARE",
    "AutoOutput",
    "DicomOutput",
    "FrameBound",
    "OutputFormat",
    "TiffOutput",
    "configured_output_format",
    "encode_preview_png",
    "encode_tiff_u16",
    "format_for_frame",
    "output_format",
]
