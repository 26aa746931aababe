"""Classical enhancers, the embedded default that needs no GPU and no weights.

All start from the same robust percentile window as the learned engine
(:mod:`drdaemon.model.normalise`), then:

* ``classical``: CLAHE on the 16-bit windowed frame (OpenCV, tile grid and clip limit from
  config), then optional gamma;
* ``he``: global histogram equalisation over 65536 levels;
* ``stretch``: the percentile stretch alone (with gamma);
* ``identity``: the frame converted to uint16 untouched (evaluation baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from drdaemon.defaults import (
    CLAHE_CLIP_LIMIT,
    CLAHE_TILE_GRID,
    CLASSICAL_METHODS,
    GAMMA,
    HIGH_PERCENTILE,
    LOW_PERCENTILE,
    ClassicalMethod,
)
from drdaemon.engines.base import Enhanced
from drdaemon.model.normalise import U16_MAX, Window, frame_to_unit, robust_window, to_unit, unit_to_u16

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
    """
    step = (U16_MAX + 1) // levels
    coarse = np.ascontiguousarray(frame, dtype=np.uint16) & np.uint16(U16_MAX - step + 1)
    clahe = cv2.createCLAHE(clipLimit=clip_limit * step, tileGridSize=(tile_grid, tile_grid))
    return clahe.apply(coarse)


def equalise_histogram_u16(frame: np.ndarray) -> np.ndarray:
    """Global histogram equalisation over all 65536 levels (OpenCV's equalizeHist is 8-bit only)."""
    counts = np.bincount(frame.ravel(), minlength=U16_MAX + 1)
    cdf = np.cumsum(counts, dtype=np.float64)
    first = cdf[np.nonzero(counts)[0][0]]
    span = max(cdf[-1] - first, 1.0)
    lut = np.clip(np.round((cdf - first) / span * U16_MAX), 0, U16_MAX).astype(np.uint16)
    return lut[frame]


def apply_gamma_u16(frame: np.ndarray, gamma: float) -> np.ndarray:
    """Gamma through a 65536-entry lookup table (exact and fast on 16-bit data)."""
    if gamma == 1.0:
        return frame
    lut = unit_to_u16((np.arange(U16_MAX + 1, dtype=np.float64) / U16_MAX) ** gamma)
    return lut[frame]


def to_u16(frame: np.ndarray) -> np.ndarray:
    """A frame as uint16 without enhancement: 8-bit scaled by 257, float through its own window."""
    if frame.dtype == np.uint16:
        return frame
    if frame.dtype == np.uint8:
        return frame.astype(np.uint16) * np.uint16(257)
    window = Window(float(np.nanmin(frame)), float(np.nanmax(frame)))
    return unit_to_u16((frame - window.low) / window.span)


@dataclass
class ClassicalEngine:
    """Percentile window, then one of the classical methods; runs on the CPU."""

    method: ClassicalMethod = "classical"
    low_percentile: float = LOW_PERCENTILE
    high_percentile: float = HIGH_PERCENTILE
    clahe_clip_limit: float = CLAHE_CLIP_LIMIT
    clahe_tile_grid: int = CLAHE_TILE_GRID
    gamma: float = GAMMA
    device: str = "cpu"
    weights_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.method not in CLASSICAL_METHODS:
            raise ValueError(f"unknown classical method {self.method!r}")
        self.name = self.method

    def enhance(self, frame: np.ndarray, window: Window | None = None) -> Enhanced:
        if self.method == "identity":
            return Enhanced(to_u16(frame), {"method": "identity"})
        if window is None:
            unit, window = frame_to_unit(frame, self.low_percentile, self.high_percentile)
        else:
            unit = to_unit(frame.astype(np.float32, copy=False), window).astype(np.float32, copy=False)
        windowed = unit_to_u16(unit)
        parameters: dict[str, object] = {
            "method": self.method,
            "window": [window.low, window.high],
            "low_percentile": self.low_percentile,
            "high_percentile": self.high_percentile,
            "gamma": self.gamma,
        }
        if self.method == "classical":
            out = clahe_u16(windowed, self.clahe_clip_limit, self.clahe_tile_grid)
            parameters |= {"clahe_clip_limit": self.clahe_clip_limit, "clahe_tile_grid": self.clahe_tile_grid}
        elif self.method == "he":
            out = equalise_histogram_u16(windowed)
        else:
            out = windowed
        return Enhanced(apply_gamma_u16(out, self.gamma), parameters)

    def warm_up(self) -> None:
        self.enhance(np.zeros((64, 64), np.uint16))


__all__ = ["ClassicalEngine", "apply_gamma_u16", "clahe_u16", "equalise_histogram_u16", "robust_window", "to_u16"]
