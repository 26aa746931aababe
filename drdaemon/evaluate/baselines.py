"""The methods an evaluation compares, named on the command line.

The classical baselines are the daemon's own :class:`~drdaemon.engines.ClassicalEngine`
methods, so the table measures exactly what the daemon would write. The one baseline that is
evaluation-only is the classical *filtering pipeline* (denoise, equalise, normalise): its
non-local-means strength comes from the evaluation's wavelet noise estimator, which needs
PyWavelets, a dependency the daemon does not have.

Method names:

=====================  =========================================================
``identity``           the input as uint16, untouched
``stretch``            percentile window (0.5 to 99.5 %) to the full range
``gamma[:G]``          the stretch, then gamma G (default 0.5, brightens dark regions)
``he``                 global histogram equalisation over 65536 levels
``clahe``/``classical``  CLAHE on the 16-bit windowed frame (OpenCV; clip 2, 8 x 8 tiles)
``filtered[:D]``       denoise D (``nlm`` default, ``median``, ``gaussian``), then CLAHE,
                       then a 1 to 99 % percentile stretch
``net:PATH``           the learned engine with the weights at PATH
``net``                the learned engine with the weights shipped with the package
=====================  =========================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from drdaemon.config import EngineConfig
from drdaemon.defaults import CLAHE_CLIP_LIMIT, CLAHE_TILE_GRID, CLASSICAL_METHODS, HIGH_PERCENTILE, LOW_PERCENTILE
from drdaemon.engines import Engine, Enhanced, build_engines
from drdaemon.engines.classical import clahe_u16
from drdaemon.evaluate.quality import noise_sigma
from drdaemon.model.normalise import U16_MAX, Window, frame_to_unit, robust_window, to_unit, unit_to_u16

DEFAULT_GAMMA = 0.5
DENOISERS = ("nlm", "median", "gaussian")
#: Non-local-means filter strength in units of the estimated noise standard deviation.
NLM_STRENGTH = 1.5


class MethodError(ValueError):
    """A method name that cannot be turned into an engine; the message says why."""


@dataclass
class FilteredEngine:
    """The classical filtering pipeline: window, denoise, CLAHE, then a percentile stretch.

    Denoising first keeps CLAHE from amplifying the noise of starved regions; the final
    stretch (1 to 99 %) spends the output range on the part rather than on the tails that
    CLAHE leaves.
    """

    denoiser: str = "nlm"
    low_percentile: float = LOW_PERCENTILE
    high_percentile: float = HIGH_PERCENTILE
    clahe_clip_limit: float = CLAHE_CLIP_LIMIT
    clahe_tile_grid: int = CLAHE_TILE_GRID
    stretch_percentiles: tuple[float, float] = (1.0, 99.0)
    device: str = "cpu"
    weights_sha256: str | None = None
    name: str = field(init=False)

    def __post_init__(self) -> None:
        if self.denoiser not in DENOISERS:
            raise MethodError(f"filtered:{self.denoiser}: the denoiser must be one of {', '.join(DENOISERS)}")
        self.name = f"filtered:{self.denoiser}"

    def denoise(self, windowed: np.ndarray) -> np.ndarray:
        if self.denoiser == "median":
            return cv2.medianBlur(windowed, 3)
        if self.denoiser == "gaussian":
            return cv2.GaussianBlur(windowed, (0, 0), 1.0)
        sigma = noise_sigma(windowed) * U16_MAX
        strength = max(NLM_STRENGTH * sigma, 1.0)
        return cv2.fastNlMeansDenoising(
            windowed, h=[strength], templateWindowSize=7, searchWindowSize=21, normType=cv2.NORM_L1
        )

    def enhance(self, frame: np.ndarray, window: Window | None = None) -> Enhanced:
        if window is None:
            unit, window = frame_to_unit(frame, self.low_percentile, self.high_percentile)
        else:
            unit = to_unit(frame.astype(np.float32, copy=False), window)
        equalised = clahe_u16(self.denoise(unit_to_u16(unit)), self.clahe_clip_limit, self.clahe_tile_grid)
        stretch = robust_window(equalised, *self.stretch_percentiles)
        out = unit_to_u16(to_unit(equalised.astype(np.float32), stretch))
        return Enhanced(
            out,
            {"method": self.name, "window": [window.low, window.high], "stretch_window": [stretch.low, stretch.high]},
        )

    def warm_up(self) -> None:
        self.enhance(np.zeros((64, 64), np.uint16))


@dataclass
class Method:
    """A named method and the engine that runs it."""

    label: str  # as it appears in the table
    engine: Engine


#: Evaluation names of the daemon's methods where they differ (the table says ``clahe``).
ALIASES = {"clahe": "classical"}
LABELS = {"classical": "clahe"}


def build_method(text: str, device: str = "auto", precision: str = "float32") -> Method:
    """Turn one ``--methods`` item into an engine, built as the daemon builds it from ``[engine]``."""
    name, _, argument = text.strip().partition(":")
    name = ALIASES.get(name.lower(), name.lower())
    if name in CLASSICAL_METHODS and not argument:
        return Method(LABELS.get(name, name), _engine(text, EngineConfig(name=name)))
    if name == "gamma":
        try:
            gamma = float(argument) if argument else DEFAULT_GAMMA
        except ValueError as exc:
            raise MethodError(f"{text}: gamma must be a number, e.g. gamma:0.5") from exc
        if not gamma > 0:
            raise MethodError(f"{text}: gamma must be positive")
        return Method(f"gamma {gamma:g}", _engine(text, EngineConfig(name="stretch", gamma=gamma)))
    if name == "filtered":
        return Method(f"filtered ({argument or 'nlm'})", FilteredEngine(denoiser=argument or "nlm"))
    if name == "net":
        label = f"net ({Path(argument).parent.name or Path(argument).stem})" if argument else "net (shipped)"
        return Method(label, _net_engine(text, argument, device, precision))
    raise MethodError(
        f"unknown method {text!r}: use identity, stretch, gamma[:G], he, clahe, "
        "filtered[:nlm|median|gaussian], net (the shipped weights) or net:WEIGHTS"
    )


def _net_engine(text: str, weights: str, device: str, precision: str) -> Engine:
    """The daemon's learned engine: the weights at ``weights``, or the shipped ones when empty."""
    path = Path(weights) if weights else None
    if path is not None and not path.is_file():
        raise MethodError(f"{text}: no weights file at {path}")
    try:
        import drdaemon.engines.net  # noqa: F401 - only to give a clear message when it is missing
    except ImportError as exc:
        raise MethodError(f"{text}: the learned engine is not available in this installation ({exc})") from exc
    try:
        config = EngineConfig(name="net", weights=path, devices=[device], precision=precision, workers_per_device=1)
    except ValueError as exc:  # pydantic's ValidationError: e.g. an unknown precision
        raise MethodError(f"{text}: {exc}") from exc
    return _engine(text, config)


def _engine(text: str, config: EngineConfig) -> Engine:
    """The daemon's engine for ``config`` (:func:`drdaemon.engines.build_engines`), one worker."""
    try:
        return build_engines(config)[0]
    except Exception as exc:  # ConfigError, DeviceLost: both mean this method cannot run here
        raise MethodError(f"{text}: {exc}") from exc


def build_methods(texts: list[str], device: str = "auto", precision: str = "float32") -> list[Method]:
    methods = [build_method(t, device, precision) for t in texts if t.strip()]
    labels = [m.label for m in methods]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise MethodError(f"methods named twice: {', '.join(duplicates)}")
    if not methods:
        raise MethodError("no methods given")
    return methods
