"""The provenance sidecar ``<output>.json``: what was enhanced, how, by what, and how long it took.

A sidecar is the commit record of a frame: it is written last, after the output, so an
output with a sidecar is complete. Its keys are a contract with whoever reads the outbox
(``input.sha256`` and ``output.sha256`` in particular); a change to them bumps
:data:`SCHEMA_VERSION`. Keys added later (``format``, ``dicom``, ``raw``,
``software.pydicom``) are optional additions that leave every earlier key as it was.
"""

from __future__ import annotations

import hashlib
import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from drdaemon.io.dicom import DicomUids
from drdaemon.io.raw import RawGeometry

SCHEMA_VERSION = 1


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DicomRecord(_Record):
    """The identity of a DICOM input or output."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


class RawRecord(_Record):
    """The geometry a ``.raw`` (from ``[input.raw]``) or ``.his`` (from its header) frame was read with."""

    width: int
    height: int
    dtype: str
    byte_order: str
    header_bytes: int
    frames: int
    source: str  # "config" or "his"


class InputRecord(_Record):
    path: str  # where the raw frame rests now (the archive), byte-identical to what arrived
    original_path: str  # where it arrived (the inbox); bytes that are not UTF-8 shown as \xNN
    #: The exact bytes of ``original_path`` in hex, only when it is not valid UTF-8 (else None).
    original_path_hex: str | None = None
    sha256: str
    bytes: int
    shape: list[int]
    dtype: str
    format: str | None = None  # tiff, png, dicom, raw, his
    dicom: DicomRecord | None = None
    raw: RawRecord | None = None
    #: The id of the claim whose commit wrote this sidecar (recovery tells its own sidecar from a
    #: peer's for identical bytes under the same name by it); None in sidecars of older versions.
    claim: str | None = None


class OutputRecord(_Record):
    path: str
    sha256: str
    bytes: int
    shape: list[int]
    dtype: str
    compression: str
    preview: str | None = None
    format: str | None = None  # tiff or dicom
    dicom: DicomRecord | None = None


class EngineRecord(_Record):
    name: str
    parameters: dict[str, Any]
    weights_sha256: str | None


class SoftwareRecord(_Record):
    drdaemon: str
    python: str
    numpy: str | None
    opencv: str | None
    tifffile: str | None
    torch: str | None
    pydicom: str | None = None
    device: str


class Sidecar(_Record):
    schema_version: int = SCHEMA_VERSION
    input: InputRecord
    output: OutputRecord
    engine: EngineRecord
    software: SoftwareRecord
    #: Seconds per stage: wait (arrival to claim), read, enhance, write, and any sub-stages the
    #: engine measured itself (e.g. upload, compute, download on a GPU).
    timings: dict[str, float]
    started_utc: str
    finished_utc: str

    def to_bytes(self) -> bytes:
        return (self.model_dump_json(indent=2) + "\n").encode("utf-8")


@dataclass
class SidecarDraft:
    """What a frame's sidecar says before its commit: all but the final names and the output.

    The commit (:mod:`drdaemon.folders.commit`) completes it once the output is encoded and
    written, so that the sidecar names the files it vouches for.
    """

    original_path: str
    input_sha256: str
    input_bytes: int
    input_shape: list[int]
    input_dtype: str
    engine: EngineRecord
    software: SoftwareRecord
    started_wall: float
    #: Seconds of the stages before the commit: wait, read, enhance.
    timings: dict[str, float]
    #: Sub-stages the engine measured itself (e.g. upload, compute, download).
    engine_timings: dict[str, float] = field(default_factory=dict)
    input_format: str | None = None
    input_dicom: DicomRecord | None = None
    input_raw: RawRecord | None = None
    #: The UIDs of a DICOM output, fixed when its format is bound to the frame, before encoding.
    output_dicom: DicomRecord | None = None
    #: The exact bytes of the original path in hex when they are not valid UTF-8.
    original_path_hex: str | None = None

    def complete(
        self,
        *,
        input_path: str,
        output_path: str,
        data: bytes,
        shape: list[int],
        dtype: str,
        compression: str,
        preview: str | None,
        write_s: float,
        output_format: str | None = None,
        claim: str | None = None,
    ) -> Sidecar:
        """The sidecar of an output whose encoded bytes are ``data``, written in ``write_s`` seconds."""
        timings = {**self.timings, "write": write_s}
        timings |= {k: float(v) for k, v in self.engine_timings.items() if k not in timings}
        return Sidecar(
            input=InputRecord(
                path=input_path,
                original_path=self.original_path,
                original_path_hex=self.original_path_hex,
                sha256=self.input_sha256,
                bytes=self.input_bytes,
                shape=self.input_shape,
                dtype=self.input_dtype,
                format=self.input_format,
                dicom=self.input_dicom,
                raw=self.input_raw,
                claim=claim,
            ),
            output=OutputRecord(
                path=output_path,
                sha256=hashlib.sha256(data).hexdigest(),
                bytes=len(data),
                shape=shape,
                dtype=dtype,
                compression=compression,
                preview=preview,
                format=output_format,
                dicom=self.output_dicom,
            ),
            engine=self.engine,
            software=self.software,
            timings={k: round(v, 6) for k, v in timings.items()},
            started_utc=utc_iso(self.started_wall),
            finished_utc=utc_iso(time.time()),
        )


class _DicomInstance(Protocol):
    """A DICOM input's source or an output's identity: its UIDs and transfer syntax."""

    @property
    def uids(self) -> DicomUids: ...

    @property
    def transfer_syntax(self) -> str: ...


def dicom_record(instance: _DicomInstance | None) -> DicomRecord | None:
    if instance is None:
        return None
    uids = instance.uids
    return DicomRecord(
        study_instance_uid=uids.study,
        series_instance_uid=uids.series,
        sop_instance_uid=uids.instance,
        sop_class_uid=uids.sop_class,
        transfer_syntax_uid=instance.transfer_syntax,
    )


def raw_record(geometry: RawGeometry | None) -> RawRecord | None:
    if geometry is None:
        return None
    return RawRecord(
        width=geometry.width,
        height=geometry.height,
        dtype=geometry.dtype,
        byte_order=geometry.byte_order,
        header_bytes=geometry.header_bytes,
        frames=geometry.frames,
        source=geometry.source,
    )


def utc_iso(timestamp: float) -> str:
    """A POSIX timestamp as ISO 8601 UTC with milliseconds, e.g. ``2026-11-25T01:02:03.456Z``."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


@cache
def _library_versions() -> tuple[tuple[str, str | None], ...]:
    # Read from package metadata, so that recording torch's version does not import torch.
    import cv2
    import numpy
    import tifffile

    from drdaemon import __version__

    return (
        ("drdaemon", __version__),
        ("python", platform.python_version()),
        ("numpy", numpy.__version__),
        ("opencv", cv2.__version__),
        ("tifffile", tifffile.__version__),
        ("torch", _package_version("torch")),
        ("pydicom", _package_version("pydicom")),
    )


def software_record(device: str) -> SoftwareRecord:
    """The versions of everything that shaped the output, and the device that ran the engine."""
    return SoftwareRecord(**dict(_library_versions()), device=device)


__all__ = [
    "SCHEMA_VERSION",
    "DicomRecord",
    "EngineRecord",
    "InputRecord",
    "OutputRecord",
    "RawRecord",
    "Sidecar",
    "SidecarDraft",
    "SoftwareRecord",
    "dicom_record",
    "raw_record",
    "software_record",
    "utc_iso",
]
