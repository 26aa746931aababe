"""Running one step: the model's parameters handed to its operation in :mod:`drdaemon.kernels.filters`.

A ``net`` step runs the network the engine loaded at start-up, handed in as a
:class:`StepNetwork` (the network lives on a floor above this one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from drdaemon.kernels import filters as ops
from drdaemon.pipeline.steps import (
    ClaheStep,
    EqualiseStep,
    GammaStep,
    GaussianStep,
    MatchStep,
    MedianStep,
    MorphologyStep,
    MultiscaleStep,
    NetStep,
    NlmStep,
    NormaliseStep,
    Step,
    TophatStep,
    UnsharpStep,
)


@dataclass(frozen=True)
class MatchTemplate:
    """A ``match`` step's reference as :func:`ops.histogram_template` gives it, and what names it in the sidecar."""

    values: np.ndarray
    quantiles: np.ndarray
    measured: dict[str, Any] = field(default_factory=dict)


def histogram_step_template(step: MatchStep) -> MatchTemplate:
    """The template of a ``match`` step with a stored histogram (a reference frame is read by the engine)."""
    if step.histogram is None:
        raise ValueError("this match step names a reference frame; the engine reads it into a template")
    values, quantiles = ops.histogram_template(step.histogram)
    return MatchTemplate(values, quantiles, {"histogram_bins": len(step.histogram)})


@dataclass
class Applied:
    """One step's result: the image and what the step measured on the frame (for the sidecar)."""

    image: np.ndarray
    measured: dict[str, Any] = field(default_factory=dict)
    #: Sub-stages the step measured itself, in seconds (a ``net`` step's upload, compute, download).
    timings: dict[str, float] = field(default_factory=dict)


class StepNetwork(Protocol):
    """A ``net`` step's network as the engine loaded it: the step's input in, its :class:`Applied` out."""

    def __call__(self, image: np.ndarray) -> Applied: ...


def apply_step(
    step: Step, image: np.ndarray, template: MatchTemplate | None = None, network: StepNetwork | None = None
) -> Applied:
    """Run ``step`` on the pipeline's float32 image; ``template`` is a ``match`` step's reference,
    prepared once (:func:`histogram_step_template`, or the engine's reading of a reference frame);
    ``network`` is a ``net`` step's loaded network (:func:`drdaemon.engines.pipeline.build_pipeline_engines`)."""
    match step:
        case NormaliseStep():
            out, window = ops.percentile_normalise(image, step.low_percentile, step.high_percentile)
            # in the units of the step's input: the frame's for a first step, else the [0, 1] scale
            return Applied(out, {"window": [window.low, window.high]})
        case GaussianStep():
            return Applied(ops.gaussian(image, step.sigma))
        case MedianStep():
            return Applied(ops.median(image, step.size))
        case NlmStep():
            return _non_local_means(step, image)
        case EqualiseStep():
            return Applied(ops.equalise(image))
        case ClaheStep():
            return Applied(ops.clahe(image, step.clip_limit, step.tile_grid))
        case UnsharpStep():
            return Applied(ops.unsharp(image, step.sigma, step.amount))
        case GammaStep():
            return Applied(ops.gamma(image, step.gamma))
        case MorphologyStep():
            return Applied(ops.morphology(image, step.operation, step.radius, step.shape))
        case TophatStep():
            return Applied(ops.tophat(image, step.radius, step.shape, step.bright, step.dark))
        case MultiscaleStep():
            if step.base == "guided":
                return Applied(
                    ops.edge_aware_contrast(image, step.gains, step.residual_gain, step.base_radius, step.base_eps)
                )
            return Applied(ops.multiscale_contrast(image, step.gains, step.residual_gain))
        case MatchStep():
            template = template or histogram_step_template(step)
            return Applied(ops.match_histogram(image, template.values, template.quantiles), dict(template.measured))
        case NetStep():
            if network is None:
                raise ValueError("a net step runs the network its engine loaded at start-up; none was given")
            return network(image)


def _non_local_means(step: NlmStep, image: np.ndarray) -> Applied:
    """``h`` as configured, or ``strength`` times the frame's measured noise sigma (at least one level)."""
    measured: dict[str, Any] = {}
    h = step.h
    if h is None:
        sigma = ops.noise_sigma_levels(image)
        h = max(step.strength * sigma, 1.0)
        measured["noise_sigma"] = round(sigma, 3)
    measured["h_used"] = round(h, 3)
    return Applied(ops.non_local_means(image, h, step.template_size, step.search_size), measured)


__all__ = ["Applied", "MatchTemplate", "StepNetwork", "apply_step", "histogram_step_template"]
