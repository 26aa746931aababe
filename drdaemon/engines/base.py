"""The engine interface: what every enhancer offers the daemon.

An engine takes a frame as numpy (any supported dtype) and returns an enhanced uint16 frame
of the same shape, together with the parameters that go into the sidecar. Engines hold
their own resources (a GPU, loaded weights) and are used by one worker thread at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from drdaemon.kernels.window import Window


@dataclass
class Enhanced:
    """An engine's answer for one frame."""

    pixels: np.ndarray  # uint16, same shape as the input frame
    parameters: dict[str, Any]
    #: Sub-stage durations in seconds the engine measured itself (e.g. upload, compute, download).
    timings: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """An enhancer the daemon can run."""

    @property
    def name(self) -> str: ...

    @property
    def device(self) -> str:
        """Where it runs, e.g. "cpu" or "cuda:0"; recorded in the sidecar."""
        ...

    @property
    def weights_sha256(self) -> str | None:
        """sha256 of the weights file, or None for engines without weights."""
        ...

    def enhance(self, frame: np.ndarray, window: Window | None = None) -> Enhanced:
        """Enhance one frame; ``window`` is its percentile window when the caller measured it
        already (the daemon's readers do), else the engine measures it."""
        ...

    def warm_up(self) -> None:
        """Run once on a small frame so the first real frame pays no start-up cost."""
        ...
