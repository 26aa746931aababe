"""DICOM radiographs for evaluation, through the daemon's own reader (:mod:`drdaemon.io.dicom`).

Decoding, polarity (MONOCHROME1 inverted, so the engines see more signal = brighter, as the
daemon gives it to them), rescale and the refusals are the daemon's, so the evaluation scores
exactly the frames the daemon would enhance. One step is the evaluation's own: the frame is
spread from the range its header allows (e.g. 0..1023 for 10 stored bits) to the full 16-bit
range, so that the fixed display rendition of the metrics (``x / 257``) shows it as its bit
depth intends.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from drdaemon.errors import FrameError
from drdaemon.io.dicom import DICOM_SUFFIXES, has_dicom_marker
from drdaemon.io.limits import DEFAULT_LIMITS, ReadLimits
from drdaemon.io.readers import HEAD_BYTES, read_frame


class DicomError(ValueError):
    """A DICOM file that is not one gray radiograph."""


def is_dicom(path: Path) -> bool:
    """A ``.dcm``/``.dicom`` name, or the ``DICM`` marker after the 128-byte preamble."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            return has_dicom_marker(fh.read(HEAD_BYTES))
    except OSError:
        return False


def full_range_u16(pixels: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Pixels spread from the header's value range onto 0..65535."""
    low, high = value_range
    scale = 65535.0 / max(high - low, 1e-12)
    return np.round((np.clip(pixels.astype(np.float64), low, high) - low) * scale).astype(np.uint16)


def read_dicom(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> np.ndarray:
    """One single-frame gray DICOM image as uint16 over the full range, brighter = more signal."""
    try:
        frame = read_frame(Path(path), limits)
    except FrameError as exc:
        raise DicomError(f"{Path(path).name}: {exc}") from exc
    if frame.dicom is None:
        raise DicomError(f"{Path(path).name} is not a DICOM file (no DICM marker after the preamble)")
    return full_range_u16(frame.pixels, frame.dicom.value_range)
