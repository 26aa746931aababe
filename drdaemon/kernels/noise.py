"""The wavelet noise estimate: one definition for the non-local-means step and the evaluation's noise gain.

Donoho & Johnstone's median absolute deviation of the finest diagonal wavelet coefficients
(db2), as :func:`skimage.restoration.estimate_sigma` computes it, written with numpy so that
the daemon needs no wavelet library: the coefficients equal PyWavelets' ``dwt2(image,
"db2")`` with its default ``symmetric`` border (the tests check this). Coefficients that are
zero up to floating-point rounding are left out: over a clipped, flat region the transform
leaves values of order 1e-17 instead of exact zeros, and where such regions cover half the
frame (a saturated background) the median would otherwise measure rounding, not noise.
"""

from __future__ import annotations

import numpy as np

from drdaemon.kernels.checks import FLOATS, check_frame

#: The db2 (Daubechies, two vanishing moments) decomposition high-pass filter.
DB2_HIGH_PASS = np.array([-0.48296291314453416, 0.8365163037378079, -0.2241438680420134, -0.12940952255126037])
#: Wavelet coefficients smaller than this are flat image (clipped background) up to rounding.
FLAT_COEFFICIENT = 1e-9
MAD_TO_SIGMA = 0.6744897501960817  # 75th percentile of the standard normal distribution


def _high_pass_decimated(image: np.ndarray, axis: int) -> np.ndarray:
    """db2 high-pass along ``axis`` with half-sample symmetric borders, every second output kept."""
    taps = len(DB2_HIGH_PASS)
    padding = [(0, 0), (0, 0)]
    padding[axis] = (taps - 1, taps - 1)
    padded = np.moveaxis(np.pad(image, padding, mode="symmetric"), axis, 0)
    full = padded.shape[0] - taps + 1  # length of the full convolution of the extended signal
    out = np.zeros_like(padded[1:full:2])
    for k, tap in enumerate(DB2_HIGH_PASS):
        # convolution: output n takes padded[n + taps - 1 - k] for tap k (strided views, no copies)
        shift = taps - 1 - k
        out += tap * padded[1 + shift : full + shift : 2]
    return np.moveaxis(out, 0, axis)


def db2_finest_diagonal(image: np.ndarray) -> np.ndarray:
    """The finest diagonal (high-high) db2 coefficients of a 2-D image, as float64."""
    image = np.asarray(image, dtype=np.float64)
    return _high_pass_decimated(_high_pass_decimated(image, 0), 1)


def sigma_of(diagonal: np.ndarray, measured: np.ndarray) -> float:
    """MAD noise sigma of the ``measured`` coefficients; 0 when there are none."""
    magnitudes = np.abs(diagonal[measured])
    if magnitudes.size == 0:
        return 0.0
    return float(np.median(magnitudes) / MAD_TO_SIGMA)


def wavelet_noise_sigma(image: np.ndarray) -> float:
    """Noise standard deviation of ``image`` in its own units, flat regions left out. Takes a 2-D float32 or float64 image."""
    check_frame("wavelet_noise_sigma", image, FLOATS)
    diagonal = db2_finest_diagonal(image)
    return sigma_of(diagonal, np.abs(diagonal) > FLAT_COEFFICIENT)


__all__ = ["FLAT_COEFFICIENT", "MAD_TO_SIGMA", "db2_finest_diagonal", "sigma_of", "wavelet_noise_sigma"]
