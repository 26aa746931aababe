"""Reading 16-bit DICOM radiographs for evaluation (pydicom is an optional dependency).

The daemon never reads DICOM; public radiographs (for example the CR frames of the
``pydicom-data`` package) are DICOM, so the evaluation does. A frame becomes uint16 with
"more signal = brighter", like a DR frame:

* MONOCHROME1 stores brighter as *lower* values; it is inverted within its stored bits.
* Signed pixels are offset so the most negative value is 0.
* Stored bits (10, 12, 14, 15...) are scaled to the full 16-bit range, so that the fixed
  display rendition of the metrics (``x / 257``) shows the frame as its bit depth intends.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DICOM_SUFFIXES = {".dcm", ".dicom"}


class DicomError(ValueError):
    """A DICOM file that is not one gray radiograph, or pydicom missing."""


def is_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: Path) -> np.ndarray:
    """One single-frame gray DICOM image as uint16, brighter = more signal."""
    try:
        import pydicom
    except ImportError as exc:
        raise DicomError("reading DICOM needs pydicom: pip install 'drdaemon[evaluate]'") from exc
    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except Exception as exc:  # pydicom raises many kinds for broken or unsupported files
        raise DicomError(f"cannot decode DICOM {Path(path).name}: {exc}") from exc
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or pixels.ndim != 2:
        raise DicomError(f"{Path(path).name}: {photometric} with shape {pixels.shape}; "
                         "only single-frame gray radiographs are evaluated")
    bits = int(dataset.get("BitsStored", pixels.dtype.itemsize * 8))
    values = pixels.astype(np.int64)
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        values = values + (1 << (bits - 1))
    top = (1 << bits) - 1
    values = np.clip(values, 0, top)
    if photometric == "MONOCHROME1":
        values = top - values
    return np.round(values * (65535.0 / top)).astype(np.uint16)
