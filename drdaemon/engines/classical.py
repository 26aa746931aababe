"""Classical enhancers, the embedded default that needs no GPU and no weights.

All start from the same robust percentile window as the learned engine
(:mod:`drdaemon.kernels.window`), then (kernels in :mod:`drdaemon.kernels.tone`):

* ``classical``: CLAHE on the 16-bit windowed frame (OpenCV, tile grid and clip limit from
  config), then optional gamma;
* ``he``: global histogram equalisation over 65536 levels;
* ``stretch``: the percentile stretch alone (with gamma);
* ``identity``: the frame converted to uint16 untouched (evaluation baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

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
from drdaemon.kernels.tone import apply_gamma_u16, clahe_u16, equalise_histogram_u16, to_u16
from drdaemon.kernels.window import Window, frame_to_unit, to_unit, unit_to_u16


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
        elif self.method == "stretch":
            out = windowed
        else:
            assert_never(self.method)
        return Enhanced(apply_gamma_u16(out, self.gamma), parameters)

    def warm_up(self) -> None:
        self.enhance(np.zeros((64, 64), np.uint16))


__all__ = ["ClassicalEngine"]
