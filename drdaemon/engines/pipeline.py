"""The pipeline engine (``engine.name = "pipeline"``): the configured steps in order.

The frame enters as float32 (its 16-bit range mapped to ``[0, 1]``, or through the window of
a first ``normalise`` or ``net`` step, which take the frame as read), each step of
:mod:`drdaemon.pipeline.steps` runs on it, and the result is clipped and rounded to 16 bits.
The sidecar's ``engine.parameters`` record the preset (or null) and every step with its
parameters and what it measured; ``timings`` gain one entry per step (``step<N>_<op>``).

A ``net`` step runs a worker of the learned engine, built by the same code as
``engine.name = "net"`` (:func:`drdaemon.engines.learned.build_learned_engines`) from the
``[engine]`` table with the step's weights, precision and window, once at start-up. Its
16-bit result becomes the pipeline's image again (``x / 65535``, which rounds back to the same
16 bits exactly), so a pipeline of one ``net`` step writes the net engine's pixels. With
``net`` steps the engine has one worker per learned-engine worker (on that worker's device);
without, one worker on the CPU.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from drdaemon.config import ConfigError, EngineConfig, PipelineConfig
from drdaemon.engines.base import Engine, Enhanced
from drdaemon.engines.learned import build_learned_engines
from drdaemon.errors import FrameError
from drdaemon.io.durable import file_sha256
from drdaemon.io.readers import read_frame
from drdaemon.kernels import filters as ops
from drdaemon.kernels.window import Window
from drdaemon.pipeline.apply import Applied, MatchTemplate, apply_step, histogram_step_template
from drdaemon.pipeline.steps import MatchStep, MedianStep, NetStep, NormaliseStep, Step

#: Steps that take the frame as read in first position (they measure their window in its units).
TAKES_THE_FRAME = (NormaliseStep, NetStep)
#: The learned engine's own sub-stages (:data:`drdaemon.service.frame.ENGINE_SUB_STAGES`): the
#: pipeline reports their sums over its ``net`` steps under the same names, for the metrics.
NET_SUB_STAGES = ("upload", "compute", "download")


def step_key(index: int, step: Step) -> str:
    """The timing key of a step: ``step0_normalise``, ``step1_multiscale``, ..."""
    return f"step{index}_{step.op}"


@dataclass(frozen=True)
class NetRunner:
    """A ``net`` step's network: one worker of the learned engine, called on the step's input.

    The input is the frame as read (first position) or the pipeline's float32 image; the
    engine measures its percentile window and runs exactly as ``engine.name = "net"``.
    """

    engine: Engine

    def __call__(self, image: np.ndarray) -> Applied:
        result = self.engine.enhance(image)
        measured = {
            "weights_sha256": self.engine.weights_sha256,
            # the ONNX Runtime engine names its backend; the PyTorch engine's parameters never had the key
            "backend": result.parameters.get("backend", "pytorch"),
            "engine": result.parameters,
        }
        return Applied(ops.frame_to_image(result.pixels), measured, dict(result.timings))


@dataclass
class PipelineEngine:
    """The ordered steps as one engine; ``preset`` names where they came from (None: configured)."""

    steps: tuple[Step, ...]
    preset: str | None = None
    device: str = "cpu"
    weights_sha256: str | None = None
    #: The ``match`` steps' references by step index, read once at start-up (:func:`match_templates`).
    templates: dict[int, MatchTemplate] = field(default_factory=dict)
    #: The ``net`` steps' networks by step index, loaded once at start-up (:func:`build_pipeline_engines`).
    networks: dict[int, NetRunner] = field(default_factory=dict)
    name: str = field(default="pipeline", init=False)

    def enhance(self, frame: np.ndarray, window: Window | None = None) -> Enhanced:
        """Run the steps; ``window`` is not used, since ``normalise`` and ``net`` steps measure their own.

        A first ``normalise`` or ``net`` step takes the frame as it is (its window is measured
        in the frame's own units, which a conversion to ``[0, 1]`` first would only rescale),
        so the frame is converted once instead of twice, and a first ``net`` step sees what
        the net engine sees.
        """
        timings: dict[str, float] = {}
        image = frame
        if not (self.steps and isinstance(self.steps[0], TAKES_THE_FRAME)):
            start = time.perf_counter()
            image = ops.frame_to_image(frame)
            timings["pipeline_input"] = time.perf_counter() - start
        records: list[dict[str, Any]] = []
        for index, step in enumerate(self.steps):
            start = time.perf_counter()
            applied = apply_step(step, image, self.templates.get(index), self.networks.get(index))
            key = step_key(index, step)
            timings[key] = time.perf_counter() - start
            for stage, seconds in applied.timings.items():
                timings[f"{key}_{stage}"] = seconds
                if stage in NET_SUB_STAGES:
                    timings[stage] = timings.get(stage, 0.0) + seconds
            image = applied.image
            records.append(step.record(applied.measured))
        start = time.perf_counter()
        pixels = ops.image_to_u16(image)
        timings["pipeline_output"] = time.perf_counter() - start
        return Enhanced(pixels, {"method": "pipeline", "preset": self.preset, "steps": records}, timings)

    def warm_up(self) -> None:
        """Warm the networks up (memory calibration, the detector's frame size), then run the steps once."""
        for runner in self.networks.values():
            runner.engine.warm_up()
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


def net_step_config(engine: EngineConfig, step: NetStep) -> EngineConfig:
    """The ``[engine]`` table a ``net`` step's network is built from: the table's devices and
    runtime keys, the step's weights, precision and window."""
    return engine.model_copy(
        update={
            "name": "net",
            "weights": step.weights,
            "precision": step.precision,
            "low_percentile": step.low_percentile,
            "high_percentile": step.high_percentile,
        }
    )


def net_step_workers(engine: EngineConfig, steps: tuple[Step, ...]) -> list[dict[int, NetRunner]]:
    """Each pipeline worker's networks by step index: one worker per learned-engine worker, all of a
    worker's ``net`` steps on one device; ``[{}]`` (one worker, on the CPU) without ``net`` steps."""
    per_step: dict[int, list[Engine]] = {
        index: build_learned_engines(net_step_config(engine, step), f"engine.pipeline.steps.{index}.net.weights")
        for index, step in enumerate(steps)
        if isinstance(step, NetStep)
    }
    if not per_step:
        return [{}]
    layouts = {index: [e.device for e in workers] for index, workers in per_step.items()}
    first = next(iter(layouts.values()))
    if any(layout != first for layout in layouts.values()):  # the same [engine] table gives the same layout
        raise ConfigError(f"engine.pipeline.steps: the net steps' workers run on different devices: {layouts}")
    return [{index: NetRunner(workers[n]) for index, workers in per_step.items()} for n in range(len(first))]


def combined_weights_sha256(runners: dict[int, NetRunner]) -> str | None:
    """What ``engine.weights_sha256`` records for a pipeline: None without ``net`` steps, the weights'
    sha256 when every ``net`` step runs the same file, else the sha256 of their sha256s in step
    order joined by commas (each step's record names its own)."""
    digests = [runners[index].engine.weights_sha256 or "" for index in sorted(runners)]
    if not digests:
        return None
    if len(set(digests)) == 1:
        return digests[0]
    return hashlib.sha256(",".join(digests).encode("ascii")).hexdigest()


def build_pipeline_engines(engine: EngineConfig, threads: int | None = None) -> list[PipelineEngine]:
    """The workers for ``engine.name = "pipeline"``: ``[engine.pipeline]``'s steps, their ``match``
    references read and their ``net`` steps' weights loaded once; ``threads`` sets OpenCV's thread
    count (None: its default)."""
    config = engine.pipeline
    steps = config.resolved_steps()
    check_step_libraries(steps)
    if threads is not None:
        cv2.setNumThreads(threads)
    templates = match_templates(steps)
    engines: list[PipelineEngine] = []
    for networks in net_step_workers(engine, steps):
        device = next(iter(networks.values())).engine.device if networks else "cpu"
        sha256 = combined_weights_sha256(networks)
        engines.append(PipelineEngine(steps, config.preset_name(), device, sha256, templates, networks))
    return engines


def build_pipeline_engine(config: PipelineConfig, threads: int | None = None) -> PipelineEngine:
    """The first worker of :func:`build_pipeline_engines` for ``[engine.pipeline]`` alone (the
    ``[engine]`` table's defaults for any ``net`` step): for the bench and the tests."""
    return build_pipeline_engines(EngineConfig(name="pipeline", pipeline=config), threads)[0]


__all__ = [
    "NetRunner",
    "PipelineEngine",
    "build_pipeline_engine",
    "build_pipeline_engines",
    "check_step_libraries",
    "combined_weights_sha256",
    "match_templates",
    "net_step_config",
    "net_step_workers",
    "step_key",
]
