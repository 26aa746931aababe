"""A toy engine in one file, as a new engine is written: the class and its builder.

It inverts the frame's gray scale. The registry test (``test_engine_registry.py``) registers
it beside the real engines, as one entry in ``drdaemon.engines.registry.ENGINES`` would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from drdaemon.config import EngineConfig
from drdaemon.engines.base import Engine, Enhanced
from drdaemon.kernels.tone import to_u16
from drdaemon.kernels.window import Window


@dataclass
class InvertEngine:
    """The frame's 16-bit gray scale upside down."""

    device: str = "cpu"
    weights_sha256: str | None = None
    name: str = field(default="invert", init=False)

    def enhance(self, frame: np.ndarray, window: Window | None = None) -> Enhanced:
        return Enhanced(np.uint16(65535) - to_u16(frame), {"method": "invert"})

    def warm_up(self) -> None:
        self.enhance(np.zeros((8, 8), np.uint16))


def build_invert(config: EngineConfig) -> list[Engine]:
    return [InvertEngine()]
