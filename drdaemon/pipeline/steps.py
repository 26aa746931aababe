"""The pipeline's steps: one validated model per operation (:mod:`drdaemon.kernels.filters` has the operations).

A step is what one ``[[engine.pipeline.steps]]`` table says: ``op`` names the operation and
the other keys are its parameters, checked when the configuration loads, so a bad step stops
the daemon at start-up with exit 78, naming the step's index and op
(``engine.pipeline.steps.1.median.size: ...``). The models are data only (the configuration
imports them); :func:`drdaemon.pipeline.apply.apply_step` runs one. The ``net`` step names the
network's weights; the engine (:mod:`drdaemon.engines.pipeline`) loads them at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drdaemon import defaults
from drdaemon.defaults import PrecisionSetting
from drdaemon.kernels.filters import Footprint, Morphology


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def record(self, measured: dict[str, Any]) -> dict[str, Any]:
        """The sidecar's entry: every parameter, then what was measured."""
        return self.model_dump(mode="json") | measured


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError("must be odd")
    return value


class NormaliseStep(_Step):
    """Percentile normalisation: the ``[low, high]`` percentile window stretched to the full range."""

    op: Literal["normalise"] = "normalise"
    low_percentile: float = Field(defaults.LOW_PERCENTILE, ge=0.0, lt=50.0)
    high_percentile: float = Field(defaults.HIGH_PERCENTILE, gt=50.0, le=100.0)


class GaussianStep(_Step):
    """Gaussian denoising (low-pass) with standard deviation ``sigma`` pixels."""

    op: Literal["gaussian"] = "gaussian"
    sigma: float = Field(1.0, gt=0.0, le=50.0)


class MedianStep(_Step):
    """Median denoising over a ``size`` x ``size`` window (odd; above 5 needs SciPy)."""

    op: Literal["median"] = "median"
    size: int = Field(3, ge=3, le=15)

    check_size_is_odd = field_validator("size")(_odd)


class NlmStep(_Step):
    """Non-local-means denoising; strength ``h`` in 16-bit levels, or ``strength`` times the
    frame's estimated noise sigma when ``h`` is not set (the noise varies from frame to frame)."""

    op: Literal["nlm"] = "nlm"
    strength: float = Field(1.5, gt=0.0, le=20.0)
    h: float | None = Field(None, gt=0.0)
    template_size: int = Field(7, ge=3, le=21)
    search_size: int = Field(21, ge=5, le=63)

    check_sizes_are_odd = field_validator("template_size", "search_size")(_odd)

    @model_validator(mode="after")
    def _search_covers_template(self) -> NlmStep:
        if self.search_size <= self.template_size:
            raise ValueError(f"search_size ({self.search_size}) must exceed template_size ({self.template_size})")
        return self


class EqualiseStep(_Step):
    """Global histogram equalisation over 65536 levels."""

    op: Literal["equalise"] = "equalise"


class ClaheStep(_Step):
    """Contrast-limited adaptive histogram equalisation (the classical engine's)."""

    op: Literal["clahe"] = "clahe"
    clip_limit: float = Field(defaults.CLAHE_CLIP_LIMIT, gt=0.0)
    tile_grid: int = Field(defaults.CLAHE_TILE_GRID, ge=1, le=64)


class UnsharpStep(_Step):
    """Unsharp masking: ``x + amount * (x - gaussian(x, sigma))``."""

    op: Literal["unsharp"] = "unsharp"
    sigma: float = Field(2.0, gt=0.0, le=50.0)
    amount: float = Field(0.5, ge=0.0, le=10.0)


class GammaStep(_Step):
    """Gamma ``x ** gamma`` (< 1 brightens the dark, thick sections)."""

    op: Literal["gamma"] = "gamma"
    gamma: float = Field(0.5, gt=0.0, le=10.0)


class MorphologyStep(_Step):
    """Gray-level opening or closing with a disk or square of ``radius`` pixels."""

    op: Literal["morphology"] = "morphology"
    operation: Morphology = "opening"
    radius: int = Field(1, ge=1, le=50)
    shape: Footprint = "disk"


class TophatStep(_Step):
    """Top-hat contrast: bright details smaller than the footprint added ``bright`` times, dark ones
    subtracted ``dark`` times."""

    op: Literal["tophat"] = "tophat"
    radius: int = Field(8, ge=1, le=50)
    shape: Footprint = "disk"
    bright: float = Field(1.0, ge=0.0, le=10.0)
    dark: float = Field(1.0, ge=0.0, le=10.0)


class MultiscaleStep(_Step):
    """Laplacian-pyramid contrast: one gain per band, finest first, and the coarse residual's gain.

    The finest band carries the quantum noise: keep its gain at 1 to leave the noise level as it was.
    """

    op: Literal["multiscale"] = "multiscale"
    gains: list[Annotated[float, Field(gt=0.0, le=10.0)]] = Field(
        default_factory=lambda: [1.0, 1.3, 1.5, 1.4, 1.2], min_length=1, max_length=8
    )
    residual_gain: float = Field(1.0, ge=0.0, le=2.0)
    #: Where the trend is compressed: ``pyramid`` the Laplacian pyramid's coarse residual (bands
    #: along strong edges), ``guided`` an edge-aware base layer (guided filter; no bands).
    base: Literal["pyramid", "guided"] = "pyramid"
    #: The guided filter's window radius in pixels (``base = "guided"``).
    base_radius: int = Field(32, ge=1, le=512)
    #: The guided filter's eps in squared display units: steps much above ``sqrt(eps)`` stay in the base.
    base_eps: float = Field(1e-3, gt=0.0, le=1.0)


class MatchStep(_Step):
    """Histogram matching: the frame's gray levels remapped so that its histogram follows a reference's.

    The reference is a frame file (``reference``, read as the daemon reads frames, relative
    paths against the configuration file's folder) or a stored ``histogram``: counts over
    equal bins of the 16-bit range, darkest first (any bin count from 2 to 65536). Exactly
    one of the two. Works on the 16-bit rendition, like ``equalise``; the result is
    ``skimage.exposure.match_histograms`` of that rendition.
    """

    op: Literal["match"] = "match"
    reference: Path | None = None
    histogram: list[Annotated[float, Field(ge=0.0)]] | None = Field(None, min_length=2, max_length=65536)

    @model_validator(mode="after")
    def _one_reference(self) -> MatchStep:
        if (self.reference is None) == (self.histogram is None):
            raise ValueError("give either reference (a frame file) or histogram (counts per bin), exactly one")
        if self.histogram is not None and not sum(self.histogram) > 0:
            raise ValueError("histogram: the counts add up to zero")
        return self


class NetStep(_Step):
    """The learned enhancer: the network of ``engine.name = "net"`` as one step among the others.

    ``weights`` is a ``.safetensors`` file (or an exported ``.onnx`` model, run on ONNX Runtime),
    relative paths against the configuration file's folder; unset: the weights shipped with the
    package, as ``engine.name = "net"`` without ``engine.weights``. ``precision`` means what
    ``engine.precision`` means (``auto``: bfloat16 on a CPU, float16 on CUDA). The step measures
    the percentile window ``[low_percentile, high_percentile]`` of its input and maps it to
    ``[0, 1]``, as the network saw its training crops. In first position it takes the frame as
    read, exactly as ``engine.name = "net"`` does, so a pipeline of this step alone writes the
    same pixels; later it takes the pipeline's image (a window measured after a ``normalise``
    is close to ``[0, 1]`` already). Its result is rounded to 16 bits, as the net engine's.

    Where it runs follows the ``[engine]`` table: ``engine.devices`` (one pipeline worker per
    learned-engine worker: ``engine.workers_per_device`` per GPU, one on the CPU),
    ``engine.memory_budget_mb`` (exact tiles above it), ``engine.compile``,
    ``engine.channels_last``, ``engine.cudnn_benchmark``, ``engine.warm_up_frame_size``,
    ``engine.allow_pickle`` and ``engine.tensorrt``. The weights are read and checked once at
    start-up (``.safetensors`` weights that others may write are refused, as for ``engine.weights``)
    and again on SIGHUP. The sidecar's step
    records ``weights_sha256``, ``backend`` (``pytorch`` or ``onnxruntime``) and ``engine``: the
    net engine's own parameters for the frame (the precision that ran, the window, the device,
    whether it tiled).
    """

    op: Literal["net"] = "net"
    weights: Path | None = None
    precision: PrecisionSetting = defaults.PRECISION
    low_percentile: float = Field(defaults.LOW_PERCENTILE, ge=0.0, lt=50.0)
    high_percentile: float = Field(defaults.HIGH_PERCENTILE, gt=50.0, le=100.0)


#: One ``[[engine.pipeline.steps]]`` table; ``op`` picks the model.
Step = Annotated[
    NormaliseStep
    | GaussianStep
    | MedianStep
    | NlmStep
    | EqualiseStep
    | ClaheStep
    | UnsharpStep
    | GammaStep
    | MorphologyStep
    | TophatStep
    | MultiscaleStep
    | MatchStep
    | NetStep,
    Field(discriminator="op"),
]

__all__ = [
    "ClaheStep",
    "EqualiseStep",
    "Footprint",
    "GammaStep",
    "GaussianStep",
    "MatchStep",
    "MedianStep",
    "Morphology",
    "MorphologyStep",
    "MultiscaleStep",
    "NetStep",
    "NlmStep",
    "NormaliseStep",
    "Step",
    "TophatStep",
    "UnsharpStep",
]
