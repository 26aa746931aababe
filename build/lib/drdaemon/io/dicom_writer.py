"""The DICOM output: a derived image that a viewer or archive files beside its source (pydicom).

The output is the source's dataset with the pixels replaced and the identity of a derived
image; everything else is kept as it was read (patient/component, study, equipment, the
DICONDE/NDE modules, private groups: private values byte for byte). What changes, and why:

* **Identity.** A new SOP Instance UID (random, under ``output.dicom_uid_root``); a new series
  whose UID is derived from the source series UID and the engine configuration (method, the
  ``[engine]`` parameters that shape a frame, the weights' sha256; not a frame's own window),
  so every enhanced frame of one source series lands in one enhanced series, and another
  engine configuration makes another series. Study and frame of reference stay.
  Without a configured root, UIDs are made under pydicom's UID root (``1.2.826.0.1.3680043.8.498``),
  unique by their random or hashed suffix.
* **Derivation.** Image Type ``DERIVED\\SECONDARY`` (further values kept), a Source Image
  Sequence naming the input instance (spatial locations preserved: the frame is enhanced
  whole), a Derivation Description naming the engine, the sha256 of the parameters it
  reported for this frame and the weights sha256; instance creation and content date/time
  are the output's.
* **Pixels.** 16 bits stored, unsigned, in the input's Photometric Interpretation (a
  MONOCHROME1 input gets the enhanced frame inverted back), the identity rescale, and a
  window centre/width spanning the enhanced range. Attributes that describe the old pixel
  values (VOI LUTs, padding values, smallest/largest pixel) are dropped. A DX "for
  processing" instance becomes "for presentation": enhancement is a presentation step.
* **Transfer syntax.** Explicit VR little endian, or (``output.dicom_transfer_syntax =
  "input"``) the input's when it is uncompressed or losslessly re-encodable with an installed
  encoder (RLE, JPEG-LS lossless, JPEG 2000 lossless); a lossy input syntax is never used
  again, so the daemon never degrades the frame it enhanced.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from drdaemon import __version__
from drdaemon.io.dicom import DicomSource, DicomUids

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

TransferChoice = Literal["explicit", "input"]

EXPLICIT_VR_LITTLE = "1.2.840.10008.1.2.1"
#: Input syntaxes written again as they are (no pixel encoding involved).
_NATIVE = {"1.2.840.10008.1.2", EXPLICIT_VR_LITTLE, "1.2.840.10008.1.2.1.99"}
#: Lossless syntaxes re-encoded when pydicom has an encoder for them installed.
_LOSSLESS = {"1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"}
#: DX, mammography and intra-oral "for processing" SOP classes and their "for presentation" pairs.
_FOR_PRESENTATION = {
    "1.2.840.10008.5.1.4.1.1.1.1.1": "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "1.2.840.10008.5.1.4.1.1.1.2",
    "1.2.840.10008.5.1.4.1.1.1.3.1": "1.2.840.10008.5.1.4.1.1.1.3",
}
#: Attributes that describe the input's pixel values, which the enhanced pixels no longer have.
_STALE = (
    "VOILUTSequence",
    "WindowCenterWidthExplanation",
    "VOILUTFunction",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "PlanarConfiguration",
    "PixelDataProviderURL",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
)
_MAX_LO = 64


@dataclass(frozen=True)
class Derivation:
    """What made the enhanced frame: recorded in the output's Derivation Description and series UID."""

    engine: str
    parameters: dict[str, Any]
    weights_sha256: str | None

    @property
    def parameters_sha256(self) -> str:
        text = json.dumps(self.parameters, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def description(self) -> str:
        return (
            f"enhanced by drdaemon {__version__}: engine {self.engine}, "
            f"parameters sha256 {self.parameters_sha256}, weights sha256 {self.weights_sha256 or 'none'}"
        )


def uid_prefix(root: str | None) -> str:
    """The prefix new UIDs are made under: the configured root, else pydicom's."""
    from pydicom.uid import PYDICOM_ROOT_UID

    return PYDICOM_ROOT_UID if root is None else root.rstrip(".") + "."


def derived_series_uid(source_series: str, engine_identity: str, root: str | None) -> str:
    """The same for every frame of one source series enhanced by one engine configuration.

    ``engine_identity`` names the engine configuration (method, configured parameters,
    weights hash), never a frame's own parameters such as its percentile window.
    """
    from pydicom.uid import generate_uid

    return str(generate_uid(uid_prefix(root), entropy_srcs=[source_series, engine_identity]))


def new_instance_uid(root: str | None) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(uid_prefix(root)))


def output_transfer_syntax(source: DicomSource, choice: TransferChoice) -> str:
    """The syntax an output of ``source`` is written in (see the module docstring)."""
    if choice == "explicit":
        return EXPLICIT_VR_LITTLE
    syntax = source.transfer_syntax
    if syntax in _NATIVE:
        return syntax
    if syntax in _LOSSLESS:
        from pydicom.pixels.encoders.base import get_encoder

        encoder = get_encoder(syntax)
        if encoder is not None and encoder.is_available:
            return syntax
    return EXPLICIT_VR_LITTLE


@dataclass(frozen=True)
class DerivedIdentity:
    """The UIDs and syntax of one output, fixed before it is encoded (the sidecar records them)."""

    uids: DicomUids
    transfer_syntax: str


def engine_identity(derivation: Derivation, configuration_sha256: str | None) -> str:
    """What makes an enhanced series: the method, its configuration's hash, the weights' hash."""
    return f"{derivation.engine}:{configuration_sha256 or ''}:{derivation.weights_sha256 or ''}"


def derived_identity(
    source: DicomSource,
    derivation: Derivation,
    root: str | None,
    choice: TransferChoice,
    configuration_sha256: str | None = None,
) -> DerivedIdentity:
    """The UIDs and syntax of the output of ``source``; ``configuration_sha256`` is the engine
    configuration's (:meth:`drdaemon.config.EngineConfig.configuration_sha256`)."""
    dataset = source.dataset
    sop_class = str(dataset.get("SOPClassUID", ""))
    uids = DicomUids(
        study=str(dataset.get("StudyInstanceUID", "")),
        series=derived_series_uid(
            str(dataset.get("SeriesInstanceUID", "")), engine_identity(derivation, configuration_sha256), root
        ),
        instance=new_instance_uid(root),
        sop_class=_FOR_PRESENTATION.get(sop_class, sop_class),
    )
    return DerivedIdentity(uids, output_transfer_syntax(source, choice))


def stored_pixels(enhanced: np.ndarray, photometric: str) -> np.ndarray:
    """The enhanced frame (brighter = more signal) as the output stores it for ``photometric``."""
    pixels = np.ascontiguousarray(enhanced, dtype=np.uint16)
    return np.uint16(65535) - pixels if photometric == "MONOCHROME1" else pixels


def _window(stored: np.ndarray) -> tuple[float, float]:
    low, high = int(stored.min()), int(stored.max())
    return (low + high + 1) / 2.0, float(max(high - low + 1, 2))


def _now() -> tuple[str, str]:
    moment = datetime.now(UTC)
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S.%f")


def encode_derived_dicom(
    source: DicomSource, enhanced: np.ndarray, derivation: Derivation, identity: DerivedIdentity
) -> bytes:
    """The whole output file: the source's dataset as a derived image of ``enhanced`` (uint16)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID

    if enhanced.ndim != 2 or enhanced.dtype != np.uint16:
        raise ValueError(f"expected a uint16 2-D frame, got {enhanced.dtype} {enhanced.shape}")
    original = source.dataset
    if enhanced.shape != (original.Rows, original.Columns):
        raise ValueError(
            f"enhanced frame {enhanced.shape} differs from the source's {original.Rows}x{original.Columns}"
        )
    out = Dataset()
    for element in original:  # element by element: private and NDE values are copied as read
        out.add(copy.deepcopy(element))
    _set_identity(out, original, derivation, identity)
    stored = stored_pixels(enhanced, source.photometric)
    _set_pixels(out, stored, source.photometric)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(identity.uids.sop_class)
    meta.MediaStorageSOPInstanceUID = UID(identity.uids.instance)
    meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE)
    out.file_meta = meta
    out.preamble = b"\0" * 128  # never the input's (a TIFF header there would describe the old pixels)
    if identity.transfer_syntax in _LOSSLESS:
        out.compress(identity.transfer_syntax, stored, generate_instance_uid=False)
    else:
        meta.TransferSyntaxUID = UID(identity.transfer_syntax)
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _set_identity(out: Dataset, original: Dataset, derivation: Derivation, identity: DerivedIdentity) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import UID

    uids = identity.uids
    out.SOPClassUID = UID(uids.sop_class)
    out.SOPInstanceUID = UID(uids.instance)
    out.SeriesInstanceUID = UID(uids.series)
    if uids.sop_class != str(original.get("SOPClassUID", "")) and "PresentationIntentType" in out:
        out.PresentationIntentType = "FOR PRESENTATION"
    described = str(original.get("SeriesDescription", "")).strip()
    suffix = f"enhanced ({derivation.engine})"[:24]
    out.SeriesDescription = f"{described[: _MAX_LO - len(suffix) - 1]} {suffix}" if described else suffix
    image_type = list(original.get("ImageType", []))
    out.ImageType = ["DERIVED", "SECONDARY", *[str(v) for v in image_type[2:]]]
    out.DerivationDescription = derivation.description()
    reference = Dataset()
    reference.ReferencedSOPClassUID = UID(str(original.get("SOPClassUID", "")))
    reference.ReferencedSOPInstanceUID = UID(str(original.get("SOPInstanceUID", "")))
    reference.SpatialLocationsPreserved = "YES"
    out.SourceImageSequence = Sequence([reference])
    date, time_of_day = _now()
    out.InstanceCreationDate, out.InstanceCreationTime = date, time_of_day
    out.ContentDate, out.ContentTime = date, time_of_day


def _set_pixels(out: Dataset, stored: np.ndarray, photometric: str) -> None:
    for keyword in _STALE:
        if keyword in out:
            delattr(out, keyword)
    out.SamplesPerPixel = 1
    out.PhotometricInterpretation = photometric
    out.Rows, out.Columns = stored.shape
    out.BitsAllocated, out.BitsStored, out.HighBit, out.PixelRepresentation = 16, 16, 15, 0
    if "RescaleSlope" in out or "RescaleIntercept" in out:
        out.RescaleSlope, out.RescaleIntercept = "1", "0"
        if "RescaleType" in out:
            out.RescaleType = "US"  # unspecified: the enhanced values are not the input's units
    centre, width = _window(stored)
    out.WindowCenter, out.WindowWidth = f"{centre:g}", f"{width:g}"
    out.PixelData = stored.astype("<u2", copy=False).tobytes()
    out["PixelData"].VR = "OW"


__all__ = [
    "Derivation",
    "DerivedIdentity",
    "TransferChoice",
    "derived_identity",
    "derived_series_uid",
    "encode_derived_dicom",
    "output_transfer_syntax",
    "stored_pixels",
    "uid_prefix",
]
