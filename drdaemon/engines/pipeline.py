"""The pipeline engine (``engine.name = "pipeline"``): the configured steps in order, on the CPU.

The frame enters as float32 (its 16-bit range mapped to ``[0, 1]``, or through the window of
a first ``normalise`` step), each step of
:mod:`drdaemon.pipeline.steps` runs on it, and the result is clipped and rounded to 16 bits.
The sidecar's ``engine.parameters`` record the preset (or null) and every step with its
parameters and what it measured; ``timings`` gain one entry per step (``step<N>_<op>``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from drdaemon.config import ConfigError, PipelineConfig
from drdaemon.engines.base import Enhanced
from drdaemon.errors import FrameError
from drdaemon.io.durable import file_sha256
from drdaemon.io.readers import read_frame
from drdaemon.kernels import filters as ops
from drdaemon.kernels.window import Window
from drdaemon.pipeline.apply import MatchTemplate, apply_step, histogram_step_template
from drdaemon.pipeline.steps import MatchStep, MedianStep, NormaliseStep, Step


def step_key(index: int, step: Step) -> str:
    """The timing key of a step: ``step0_normalise``, ``step1_multiscale``, ..."""
    return f"step{index}_{step.op}"


@dataclass
class PipelineEngine:
    """The ordered steps as one engine; ``preset`` names where they came from (None: configured)."""

    steps: tuple[Step, ...]
    preset: str | None = None
    device: str = "cpu"
    weights_sha256: str | None = None
    #: The ``match`` steps' references by step index, read once at start-up (:func:`match_templates`).
    templates: dict[int, MatchTemplate] = field(default_factory=dict)
    name: str = field(default="pipeline", init=False)

    def enhance(self, frame: np.ndarray, window: Window | None = None) -> Enhanced:
        """Run the steps; ``window`` is not used, since a ``normalise`` step measures its own.

        A first ``normalise`` step takes the frame as it is (its window is measured in the
        frame's own units, which a conversion to ``[0, 1]`` first would only rescale), so
        the frame is converted once instead of twice.
        """
        timings: dict[str, float] = {}
        image = frame
        if not (self.steps and isinstance(self.steps[0], NormaliseStep)):
            start = time.perf_counter()
            image = ops.frame_to_image(frame)
            timings["pipeline_input"] = time.perf_counter() - start
        records: list[dict[str, Any]] = []
        for index, step in enumerate(self.steps):
            start = time.perf_counter()
            applied = apply_step(step, image, self.templates.get(index))
            timings[step_key(index, step)] = time.perf_counter() - start
            image = applied.image
            records.append(step.record(applied.measured))
        start = time.perf_counter()
        pixels = ops.image_to_u16(image)
        timings["pipeline_output"] = time.perf_counter() - start
        return Enhanced(pixels, {"method": "pipeline", "preset": self.preset, "steps": records}, timings)

    def warm_up(self) -> None:
        self.enhance(np.zeros((64, 64), np.uint16))


def check_step_libraries(steps: tuple[Step, ...]) -> None:
    """Refuse at start-up a step whose library is missing (SciPy, for medians above 5 x 5)."""
    for index, step in enumerate(steps):
        if isinstance(step, MedianStep) and step.size > ops.OPENCV_MEDIAN_MAX:
            try:
                import scipy.ndimage  # noqa: F401 - only to know that it is there
            except ImportError as exc:
                raise ConfigError(
                    f"engine.pipeline.steps.{index}.median.size: a {step.size} x {step.size} median needs SciPy "
                    f"(pip install 'drdaemon[pipeline]'; OpenCV filters up to {ops.OPENCV_MEDIAN_MAX}): {exc}"
                ) from exc


def match_templates(steps: tuple[Step, ...]) -> dict[int, MatchTemplate]:
    """Each ``match`` step's reference histogram, read once; an unreadable reference frame is a ConfigError."""
    templates: dict[int, MatchTemplate] = {}
    for index, step in enumerate(steps):
        if not isinstance(step, MatchStep):
            continue
        if step.reference is None:
            templates[index] = histogram_step_template(step)
            continue
        try:
            frame = read_frame(step.reference).pixels
            sha256 = file_sha256(step.reference)
        except (FrameError, OSError) as exc:
            raise ConfigError(
                f"engine.pipeline.steps.{index}.match.reference: cannot read {step.reference} as a frame: {exc}"
            ) from exc
        counts = ops.level_histogram(ops.image_to_u16(ops.frame_to_image(frame)))
        values, quantiles = ops.histogram_template(counts)
        templates[index] = MatchTemplate(values, quantiles, {"reference_sha256": sha256})
    return templates


def build_pipeline_engine(config: PipelineConfig, threads: int | None = None) -> PipelineEngine:
    """The engine for ``[engine.pipeline]``; ``threads`` sets OpenCV's thread count (None: its default)."""
    steps = config.resolved_steps()
    check_step_libraries(steps)
    if threads is not None:
        cv2.setNumThreads(threads)
    return PipelineEngine(steps, config.preset_name(), templates=match_templates(steps))


__all__ = ["PipelineEngine", "build_pipeline_engine", "check_step_libraries", "match_templates", "step_key"]
