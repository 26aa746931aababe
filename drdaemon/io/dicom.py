"""Reading DICOM and DICONDE frames (pydicom): one gray frame, its header kept for the output.

DICONDE (ASTM E2339, E2699 for DR) is DICOM with NDE modules, so one reader serves both. A
file is DICOM when ``DICM`` follows its 128-byte preamble, whatever its name and whatever the
preamble holds (some CR writers put a TIFF header there; such a file is read as DICOM).

What the engines see, and why:

* **Polarity.** Engines always see "more signal = brighter" (MONOCHROME2), as a DR frame in a
  TIFF has it. A MONOCHROME1 frame is inverted within its value range on reading; the DICOM
  output keeps the input's Photometric Interpretation and inverts the enhanced frame back, so
  a viewer shows input and output the same way round.
* **Values.** Rescale slope and intercept are applied (the Modality LUT); with the identity
  rescale of a DR frame the stored integers go to the engines as they are (uint8 or uint16),
  otherwise (or for signed pixels) the rescaled values as float32. ``value_range`` is the
  range the header allows for those values (stored bits through the rescale), which the
  evaluation uses to show a frame as its bit depth intends.

Sizes and geometry come from the header and are checked against ``input.max_pixels``
before any pixel is decoded. Compressed transfer syntaxes (JPEG 2000, JPEG-LS, RLE; deflate
is plain zlib) are decoded by pydicom's plugins, installed with ``drdaemon[dicom]``.
"""

from __future__ import annotations

import io
import warnings
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from drdaemon.errors import FrameError, Reason, Stage
from drdaemon.io.limits import DEFAULT_LIMITS, ReadLimits, check_decoded, check_shape, refuse_frames

if TYPE_CHECKING:
    from pydicom.dataset import Dataset, FileMetaDataset

# pydicom is imported where a DICOM file is met, so processes that never see one (the trainer,
# a TIFF-only station) do not pay for it.

#: Byte offset and value of the DICOM Part 10 marker.
DICM_OFFSET = 128
DICM_MARKER = b"DICM"
DICOM_SUFFIXES = {".dcm", ".dicom"}
GRAY = ("MONOCHROME1", "MONOCHROME2")
#: The transfer syntax whose whole data set (header and pixels) is one deflate stream.
DEFLATED = "1.2.840.10008.1.2.1.99"
#: Inflated bytes enough for any real header (checked before the rest is inflated).
HEADER_PEEK_BYTES = 1 << 20
#: Inflated bytes allowed beyond the pixel data the header declares (other elements).
HEADER_ALLOWANCE_BYTES = 16 << 20
#: The pixel data element's tag: reading the header stops before it.
_PIXEL_DATA_TAG = 0x7FE00010


def has_dicom_marker(head: bytes) -> bool:
    """``DICM`` after the 128-byte preamble: the one test, whatever the suffix or preamble."""
    return head[DICM_OFFSET : DICM_OFFSET + 4] == DICM_MARKER


@dataclass(frozen=True)
class DicomUids:
    """The identity of one DICOM instance, as the sidecar records it."""

    study: str
    series: str
    instance: str
    sop_class: str


@dataclass
class DicomSource:
    """The header of a DICOM input (pixel data dropped), for the derived output written beside it."""

    dataset: Dataset  # with its file_meta
    transfer_syntax: str
    photometric: str  # MONOCHROME1 or MONOCHROME2, as the input stores it
    bits_stored: int
    #: Lowest and highest value the engines' pixels can take, from the header.
    value_range: tuple[float, float]

    @property
    def uids(self) -> DicomUids:
        return uids_of(self.dataset)


def uids_of(dataset: Dataset) -> DicomUids:
    return DicomUids(
        study=str(dataset.get("StudyInstanceUID", "")),
        series=str(dataset.get("SeriesInstanceUID", "")),
        instance=str(dataset.get("SOPInstanceUID", "")),
        sop_class=str(dataset.get("SOPClassUID", "")),
    )


def parse_dicom(data: bytes, name: str, limits: ReadLimits = DEFAULT_LIMITS) -> Dataset:
    """The whole dataset (pixel data still encoded), or :class:`FrameError` when it is not DICOM.

    A deflated data set is inflated here, never by pydicom (which inflates it whole, however
    large): its header first (at most :data:`HEADER_PEEK_BYTES`), whose frame size is checked
    against ``limits``, then the rest, stopping with ``too_large`` past the pixel data the
    header declares plus :data:`HEADER_ALLOWANCE_BYTES` (never past the decoded-bytes limit
    plus that allowance). A deflate bomb thus costs at most that much memory.
    """
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a short file is judged below, not by pydicom's warnings
            stream = io.BytesIO(data)
            preamble = pydicom.filereader.read_preamble(stream, False)
            meta = pydicom.filereader._read_file_meta_info(stream)
            if meta.get("TransferSyntaxUID") == DEFLATED:
                return _inflated_dataset(memoryview(data)[stream.tell() :], preamble, meta, name, limits)
            return pydicom.dcmread(io.BytesIO(data))
    except FrameError:
        raise
    except pydicom.errors.InvalidDicomError as exc:
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"{name} is not a DICOM file: {exc}") from exc
    except EOFError as exc:
        raise FrameError(Stage.READ, Reason.TRUNCATED, f"{name} is truncated: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds for a damaged header
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"cannot parse DICOM {name}: {exc}") from exc


def _inflate(zipped: memoryview, limit: int, name: str) -> bytes:
    """At most ``limit`` bytes of a raw deflate stream; :class:`FrameError` when it holds more or ends early."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(zipped, limit + 1)
    except zlib.error as exc:
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"{name}: damaged deflated data set: {exc}") from exc
    if len(out) > limit:
        raise FrameError(
            Stage.READ,
            Reason.TOO_LARGE,
            f"{name} is a deflated data set that inflates to more than {limit} bytes "
            "(the pixel data its header declares, within input.max_decoded_bytes, plus "
            f"{HEADER_ALLOWANCE_BYTES} bytes of other elements)",
        )
    if not inflater.eof:
        raise FrameError(Stage.READ, Reason.TRUNCATED, f"{name} is truncated: the deflated data set ends early")
    return out


def _declared_pixel_bytes(head: bytes, name: str, limits: ReadLimits) -> int | None:
    """The pixel bytes an (inflated) header declares, checked against the limits; None if unreadable."""
    from pydicom.filereader import read_dataset

    try:
        header = read_dataset(io.BytesIO(head), False, True, stop_when=lambda tag, *_: tag >= _PIXEL_DATA_TAG)
        rows, columns = int(header.get("Rows", 0)), int(header.get("Columns", 0))
        allocated = int(header.get("BitsAllocated", 16))
        frames = int(header.get("NumberOfFrames", 1) or 1)
    except Exception:  # noqa: BLE001 - a header beyond the peek, or damaged: the bound alone applies
        return None
    if rows and columns:
        check_shape(name, (rows, columns), limits)
        refuse_frames(name, frames, "DICOM object")
        declared = rows * columns * max(allocated, 8) // 8
        check_decoded(name, declared, limits)
        return declared
    return None


def _inflated_dataset(
    zipped: memoryview, preamble: bytes | None, meta: FileMetaDataset, name: str, limits: ReadLimits
) -> Dataset:
    """A deflated data set, inflated within bounds (:func:`parse_dicom`), as pydicom would read it."""
    from pydicom.dataset import FileDataset
    from pydicom.filereader import read_dataset

    peek = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        head = peek.decompress(zipped, HEADER_PEEK_BYTES)
    except zlib.error as exc:
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"{name}: damaged deflated data set: {exc}") from exc
    declared = _declared_pixel_bytes(head, name, limits)
    del head, peek
    pixel_bound = limits.decoded_limit if declared is None else min(declared, limits.decoded_limit)
    inflated = _inflate(zipped, pixel_bound + HEADER_ALLOWANCE_BYTES, name)
    dataset = read_dataset(io.BytesIO(inflated), False, True)
    result = FileDataset(io.BytesIO(), dataset, preamble, meta, False, True)
    result.set_original_encoding(False, True, dataset._character_set)
    return result


def check_dicom_header(dataset: Dataset, name: str, limits: ReadLimits) -> tuple[int, int]:
    """Refuse what is not one gray frame of 8 to 16 bits, and frames over the limits; (rows, columns)."""
    if len(dataset) == 0 and len(getattr(dataset, "file_meta", ())) == 0:
        raise FrameError(Stage.READ, Reason.UNREADABLE, f"{name} has a DICM marker but no readable data elements")
    if "PixelData" not in dataset:
        if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
            raise FrameError(Stage.READ, Reason.UNSUPPORTED, f"{name} has float pixel data; integer frames only")
        sop_class = getattr(getattr(dataset, "file_meta", None), "MediaStorageSOPClassUID", None)
        if "Rows" in dataset or (sop_class is not None and "Image" in sop_class.name):
            raise FrameError(Stage.READ, Reason.TRUNCATED, f"{name} is truncated: the image has no (whole) pixel data")
        raise FrameError(Stage.READ, Reason.UNSUPPORTED, f"{name} is a DICOM object without an image")
    refuse_frames(name, int(dataset.get("NumberOfFrames", 1) or 1), "DICOM object")
    samples = int(dataset.get("SamplesPerPixel", 1))
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    if samples != 1 or photometric not in GRAY:
        raise FrameError(
            Stage.READ,
            Reason.UNSUPPORTED,
            f"{name} is {photometric or 'without photometric interpretation'} with {samples} "
            "samples per pixel; only gray MONOCHROME1/MONOCHROME2 frames are enhanced",
        )
    allocated = int(dataset.get("BitsAllocated", 0))
    stored = int(dataset.get("BitsStored", allocated))
    if allocated not in (8, 16) or not 8 <= stored <= allocated:
        raise FrameError(
            Stage.READ,
            Reason.UNSUPPORTED,
            f"{name} has {stored} stored of {allocated} allocated bits; 8 to 16 stored bits are enhanced",
        )
    if "ModalityLUTSequence" in dataset:
        raise FrameError(Stage.READ, Reason.UNSUPPORTED, f"{name} has a Modality LUT Sequence; only rescale is applied")
    rows, columns = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
    check_shape(name, (rows, columns), limits)
    check_decoded(name, rows * columns * allocated // 8, limits)
    if not dataset.file_meta.TransferSyntaxUID.is_encapsulated:
        expected = rows * columns * allocated // 8
        if len(dataset.PixelData) < expected:
            raise FrameError(
                Stage.READ,
                Reason.TRUNCATED,
                f"{name} is truncated: {len(dataset.PixelData)} bytes of pixel data, {expected} expected",
            )
    return rows, columns


def _decode_stored(dataset: Dataset, name: str) -> np.ndarray:
    """The stored values as pydicom's decoder gives them (the reference the tests compare with)."""
    from pydicom.pixels.decoders.base import get_decoder

    syntax = dataset.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise FrameError(Stage.READ, Reason.UNSUPPORTED, f"{name}: no decoder exists for {syntax.name}") from exc
    if not decoder.is_available:
        raise FrameError(
            Stage.READ,
            Reason.UNSUPPORTED,
            f"{name} is {syntax.name}; its decoder is not installed: pip install 'drdaemon[dicom]'",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels, _ = decoder.as_array(dataset)  # not cached on the dataset, which outlives the decode
            return pixels
    except Exception as exc:  # codec plugins raise their own kinds for a damaged code stream
        text = str(exc).lower()
        truncated = any(sign in text for sign in ("less than expected", "end of file", "truncat"))
        reason = Reason.TRUNCATED if truncated else Reason.UNREADABLE
        raise FrameError(Stage.READ, reason, f"cannot decode the pixels of {name}: {exc}") from exc


def _stored_range(dataset: Dataset) -> tuple[int, int]:
    bits = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 16)))
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def engine_view(stored: np.ndarray, dataset: Dataset) -> tuple[np.ndarray, tuple[float, float]]:
    """Rescaled, MONOCHROME2 pixels for the engines and the range the header allows for them."""
    low, high = _stored_range(dataset)
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    if slope == 1.0 and intercept == 0.0 and low == 0:
        top = np.array(high, dtype=stored.dtype)
        pixels = np.minimum(stored, top)  # bits above BitsStored carry nothing
        if dataset.PhotometricInterpretation == "MONOCHROME1":
            pixels = top - pixels
        return np.ascontiguousarray(pixels), (0.0, float(high))
    ends = sorted((low * slope + intercept, high * slope + intercept))
    values = np.clip(stored.astype(np.float64), low, high) * slope + intercept
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        values = (ends[0] + ends[1]) - values
    return values.astype(np.float32), (float(ends[0]), float(ends[1]))


def decode_dicom(data: bytes, name: str, limits: ReadLimits) -> tuple[np.ndarray, DicomSource]:
    """The engines' view of a DICOM frame and the header to write its derived output from."""
    dataset = parse_dicom(data, name, limits)
    check_dicom_header(dataset, name, limits)
    stored = _decode_stored(dataset, name)
    if stored.shape != (dataset.Rows, dataset.Columns):
        raise FrameError(
            Stage.READ, Reason.UNSUPPORTED, f"{name} decoded to shape {stored.shape}; one 2-D frame expected"
        )
    pixels, value_range = engine_view(stored, dataset)
    syntax = str(dataset.file_meta.TransferSyntaxUID)
    # The header travels with the frame to its output; the pixels do so once, decoded, and the
    # file's bytes not at all.
    del dataset.PixelData
    dataset.buffer = None
    source = DicomSource(
        dataset=dataset,
        transfer_syntax=syntax,
        photometric=str(dataset.PhotometricInterpretation),
        bits_stored=int(dataset.get("BitsStored", dataset.BitsAllocated)),
        value_range=value_range,
    )
    return pixels, source


def dicom_complete(data: bytes, limits: ReadLimits = DEFAULT_LIMITS) -> bool:
    """A DICOM file is complete when its header parses and its pixel data is all there.

    A file over ``limits`` counts as complete: the reader refuses it as too large, with a reason.
    """
    try:
        check_dicom_header(parse_dicom(data, "file", limits), "file", limits)
    except FrameError as error:
        return error.reason not in (Reason.TRUNCATED, Reason.UNREADABLE)
    return True


__all__ = [
    "DICOM_SUFFIXES",
    "DicomSource",
    "DicomUids",
    "check_dicom_header",
    "decode_dicom",
    "dicom_complete",
    "engine_view",
    "has_dicom_marker",
    "parse_dicom",
    "uids_of",
]
