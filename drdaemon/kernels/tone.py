"""Tone kernels on 16-bit frames: CLAHE, global histogram equalisation, gamma, the conversion to uint16.

Pure functions (numpy and OpenCV, nothing of the project): the classical engine
(:mod:`drdaemon.engines.classical`), the pipeline's steps (:mod:`drdaemon.kernels.filters`),
the evaluation's baselines and the trainer's CLAHE prior all call these, so they cannot drift
apart.
"""

from __future__ import annotations

from typing import Final

import cv2
import numpy as np

from drdaemon.kernels.checks import FLOATS, check_frame
from drdaemon.kernels.window import U16_MAX, Window, image_to_u16, u16_to_image, unit_to_u16

#: CLAHE clip limit (a multiple of the mean bin height) and tile grid (tiles per side).
CLAHE_CLIP_LIMIT: Final = 2.0
CLAHE_TILE_GRID: Final = 8
#: Gray levels the 16-bit CLAHE tells apart in its tile histograms (12 bits).
CLAHE_LEVELS = 4096


def clahe_u16(
    frame: np.ndarray,
    clip_limit: float = CLAHE_CLIP_LIMIT,
    tile_grid: int = CLAHE_TILE_GRID,
    levels: int = CLAHE_LEVELS,
) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a uint16 frame (OpenCV), full range out.

    OpenCV's 16-bit CLAHE clips each of its 65536 bins at ``int(clip_limit * tile_pixels /
    65536)`` counts, at least one: on tiles of some ten thousand pixels that is one count for
    every clip limit below 4, so the limit does nothing and the clipping acts on count noise.
    Rounding the frame down to ``levels`` gray levels (kept spread over the 16-bit range) and
    scaling the limit by ``65536 / levels`` gives ``clip_limit`` its usual meaning, a
    multiple of the mean height of a ``levels``-bin histogram. On a windowed frame the
    dropped low bits are finer than one raw detector level unless the raw window spans more
    than ``levels`` values.

    Takes and returns a 2-D (height, width) uint16 frame.
    """
    check_frame(
        "clahe_u16",
        frame,
        (np.uint16,),
        "a float frame in [0, 1] goes through drdaemon.kernels.window.unit_to_u16 first",
    )
    step = (U16_MAX + 1) // levels
    coarse = np.ascontiguousarray(frame, dtype=np.uint16) & np.uint16(U16_MAX - step + 1)
    clahe = cv2.createCLAHE(clipLimit=clip_limit * step, tileGridSize=(tile_grid, tile_grid))
    return clahe.apply(coarse)


def equalise_histogram_u16(frame: np.ndarray) -> np.ndarray:
    """Global histogram equalisation over all 65536 levels (OpenCV's equalizeHist is 8-bit only). 2-D uint16 in and out."""
    check_frame("equalise_histogram_u16", frame, (np.uint16,), "convert with drdaemon.kernels.tone.to_u16 first")
    counts = np.bincount(frame.ravel(), minlength=U16_MAX + 1)
    cdf = np.cumsum(counts, dtype=np.float64)
    first = cdf[np.nonzero(counts)[0][0]]
    span = max(cdf[-1] - first, 1.0)
    lut = np.clip(np.round((cdf - first) / span * U16_MAX), 0, U16_MAX).astype(np.uint16)
    return lut[frame]


def gamma(image: np.ndarray, exponent: float) -> np.ndarray:
    """``x ** exponent`` on ``x`` clipped to ``[0, 1]``.

    The one gamma of the project: the pipeline's ``gamma`` step runs it on its float32 image;
    the classical engines' ``engine.gamma`` (and the evaluation's ``gamma:G`` row, the stretch
    with that option) run it through :func:`apply_gamma_u16`'s table of its 65536 values.
    OpenCV's ``pow`` on the float32 image: a 65536-entry table needs the image rounded to
    16 bits and back, and numpy's table lookup on 13 megapixels takes three times as long.

    2-D float32 (or float64) in and out.
    """
    check_frame("gamma", image, FLOATS, "a uint16 frame goes through apply_gamma_u16")
    clipped = np.clip(image, 0.0, 1.0)
    return cv2.pow(clipped, exponent, dst=clipped)


def apply_gamma_u16(frame: np.ndarray, exponent: float) -> np.ndarray:
    """:func:`gamma` on a uint16 frame, through a 65536-entry table of its values (exact and fast on 16 bits). 2-D uint16 in and out."""
    check_frame("apply_gamma_u16", frame, (np.uint16,), "a float image goes through gamma")
    if exponent == 1.0:
        return frame
    levels = u16_to_image(np.arange(U16_MAX + 1, dtype=np.uint16).reshape(1, -1))
    lut = image_to_u16(gamma(levels, exponent)).ravel()
    return lut[frame]


def to_u16(frame: np.ndarray) -> np.ndarray:
    """A frame as uint16 without enhancement: 8-bit scaled by 257, float through its own window. 2-D uint8, uint16, float32 or float64 in, 2-D uint16 out."""
    check_frame("to_u16", frame, (np.uint8, np.uint16, np.float32, np.float64))
    if frame.dtype == np.uint16:
        return frame
    if frame.dtype == np.uint8:
        return frame.astype(np.uint16) * np.uint16(257)
    window = Window(float(np.nanmin(frame)), float(np.nanmax(frame)))
    return unit_to_u16((frame - window.low) / window.span)


__all__ = [
    "CLAHE_CLIP_LIMIT",
    "CLAHE_LEVELS",
    "CLAHE_TILE_GRID",
    "apply_gamma_u16",
    "clahe_u16",
    "equalise_histogram_u16",
    "gamma",
    "to_u16",
]
