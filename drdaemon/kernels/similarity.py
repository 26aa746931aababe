"""Reference similarity of two integer frames: PSNR and SSIM over the dtype's range (scikit-image).

The evaluation scores an engine's output against the label with these
(:mod:`drdaemon.evaluate.quality` re-exports them), the radiograph CLIP's data and judge grade
their renderings with them. Both take two 2-D frames, (height, width), of the same shape and
the same integer dtype, uint8 or uint16; the range is the dtype's (255 or 65535), so a frame
in another dtype or a float frame in [0, 1] is refused instead of being scored on a wrong
range. Needs scikit-image (the ``evaluate`` extra).
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from drdaemon.kernels.checks import check_frame

#: The dtypes a reference metric knows the range of.
INTEGER_FRAMES = (np.uint8, np.uint16)
_HINT = "convert a [0, 1] float frame with drdaemon.kernels.window.unit_to_u16 first"


def data_range_of(frame: np.ndarray) -> float:
    """The nominal range of an integer frame's dtype (65535 for uint16, 255 for uint8)."""
    if not np.issubdtype(frame.dtype, np.integer):
        raise ValueError(f"PSNR/SSIM need integer frames to know their range, got {frame.dtype}; {_HINT}")
    return float(np.iinfo(frame.dtype).max)


def _checked_pair(kernel: str, reference: np.ndarray, test: np.ndarray) -> float:
    """The range of a checked (reference, test) pair: 2-D, uint8 or uint16, same shape and dtype."""
    check_frame(kernel, reference, INTEGER_FRAMES, _HINT)
    check_frame(kernel, test, INTEGER_FRAMES, _HINT)
    if reference.shape != test.shape:
        raise ValueError(f"{kernel}: expected frames of one shape, got {reference.shape} and {test.shape}")
    if reference.dtype != test.dtype:
        raise ValueError(f"{kernel}: expected frames of one dtype, got {reference.dtype} and {test.dtype}")
    return data_range_of(reference)


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over the dtype's range; inf for identical frames.

    ``reference``, ``test``: (H, W) uint8 or uint16, same shape and dtype.
    """
    data_range = _checked_pair("psnr", reference, test)
    return float(peak_signal_noise_ratio(reference, test, data_range=data_range))


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean structural similarity over the dtype's range (scikit-image defaults, 7 x 7 window).

    ``reference``, ``test``: (H, W) uint8 or uint16, same shape and dtype, at least 7 x 7.
    """
    data_range = _checked_pair("ssim", reference, test)
    return float(structural_similarity(reference, test, data_range=data_range))
