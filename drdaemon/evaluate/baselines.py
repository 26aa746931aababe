"""The methods an evaluation compares, named on the command line.

Every method is one of the daemon's own engines, built as the daemon builds it from
``[engine]``, so the table measures exactly what the daemon would write. Every engine of the
registry (:data:`drdaemon.engines.registry.ENGINES`) is a method under its own name; a few
names add an argument (``pipeline:PRESET``, ``net:WEIGHTS``) or are shorthands for an
engine's configuration (``gamma[:G]`` is the stretch with ``engine.gamma``, ``filtered[:D]``
the pipeline's filtering presets, ``clahe`` the ``classical`` engine). ``pipeline`` alone is
the ``[engine.pipeline]`` of ``--config`` (its steps, ``net`` steps included, or its preset;
``detail`` without one), built from that ``[engine]`` table on ``--device``.

Method names:

=====================  =========================================================
``identity``           the input as uint16, untouched
``stretch``            percentile window (0.5 to 99.5 %) to the full range
``gamma[:G]``          the stretch, then gamma G (default 0.5, brightens dark regions)
``he``                 global histogram equalisation over 65536 levels
``clahe``/``classical``  CLAHE on the 16-bit windowed frame (OpenCV; clip 2, 8 x 8 tiles)
``filtered[:D]``       denoise D (``nlm`` default, ``median``, ``gaussian``), then CLAHE,
                       then a 1 to 99 % percentile stretch: the pipeline presets
                       ``filtered``, ``filtered-median``, ``filtered-gaussian``
``pipeline:PRESET``    the pipeline engine with a preset (``detail``, ``filtered``, ...)
``pipeline``           the configured ``[engine.pipeline]`` (``--config``), e.g. with a net step
``net:PATH``           the learned engine with the weights at PATH
``net``                the learned engine with the weights shipped with the package
=====================  =========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from drdaemon.config import EngineConfig, PipelineConfig
from drdaemon.engines import ENGINES, Engine, Registry, build_engines
from drdaemon.pipeline.presets import PRESET_NAMES

DEFAULT_GAMMA = 0.5
#: The filtering pipeline's denoisers and the presets that run them.
DENOISERS = {"nlm": "filtered", "median": "filtered-median", "gaussian": "filtered-gaussian"}


class MethodError(ValueError):
    """A method name that cannot be turned into an engine; the message says why."""


@dataclass
class Method:
    """A named method and the engine that runs it."""

    label: str  # as it appears in the table
    engine: Engine


#: Evaluation names of the daemon's methods where they differ (the table says ``clahe``).
ALIASES = {"clahe": "classical"}
LABELS = {"classical": "clahe"}


def method_names(registry: Registry = ENGINES) -> str:
    """The ``--methods`` names, for messages and ``--help``."""
    shorthands = ["gamma[:G]", "clahe", "filtered[:nlm|median|gaussian]", "pipeline[:PRESET]", "net[:WEIGHTS]"]
    plain = [name for name in registry.names() if name not in ("pipeline", "net")]
    return ", ".join([*plain, *shorthands])


def build_method(
    text: str,
    device: str = "auto",
    precision: str = "float32",
    registry: Registry = ENGINES,
    engine: EngineConfig | None = None,
) -> Method:
    """Turn one ``--methods`` item into an engine, built as the daemon builds it from ``[engine]``.

    ``engine`` is the ``[engine]`` table of ``--config``: ``pipeline`` without a preset runs its
    ``[engine.pipeline]`` (whose ``net`` steps run on ``device``, at their own precision).
    """
    name, _, argument = text.strip().partition(":")
    name = ALIASES.get(name.lower(), name.lower())
    if name == "gamma":
        try:
            gamma = float(argument) if argument else DEFAULT_GAMMA
        except ValueError as exc:
            raise MethodError(f"{text}: gamma must be a number, e.g. gamma:0.5") from exc
        if not gamma > 0:
            raise MethodError(f"{text}: gamma must be positive")
        return Method(f"gamma {gamma:g}", _engine(text, EngineConfig(name="stretch", gamma=gamma), registry))
    if name == "filtered":
        denoiser = argument or "nlm"
        if denoiser not in DENOISERS:
            raise MethodError(f"{text}: the denoiser must be one of {', '.join(DENOISERS)}")
        return Method(f"filtered ({denoiser})", _pipeline_engine(text, DENOISERS[denoiser], registry))
    if name == "pipeline" and not argument:
        return _configured_pipeline(text, engine or EngineConfig(), device, registry)
    if name == "pipeline":
        return Method(f"pipeline ({argument})", _pipeline_engine(text, argument, registry))
    if name == "net":
        label = f"net ({Path(argument).parent.name or Path(argument).stem})" if argument else "net (shipped)"
        return Method(label, _net_engine(text, argument, device, precision, registry))
    if name in registry.entries and not argument:
        return Method(LABELS.get(name, name), _engine(text, EngineConfig(name=name), registry))
    if name in registry.entries:
        raise MethodError(f"{text}: the {name} method takes no argument")
    raise MethodError(f"unknown method {text!r}: use {method_names(registry)}")


def _configured_pipeline(text: str, engine: EngineConfig, device: str, registry: Registry) -> Method:
    """The ``[engine.pipeline]`` of ``engine``, labelled by its preset or its steps' ops, one worker on ``device``."""
    preset = engine.pipeline.preset_name()
    label = preset if preset is not None else " → ".join(step.op for step in engine.pipeline.steps)
    config = engine.model_copy(update={"name": "pipeline", "devices": [device], "workers_per_device": 1})
    return Method(f"pipeline ({label})", _engine(text, config, registry))


def _pipeline_engine(text: str, preset: str, registry: Registry) -> Engine:
    if preset not in PRESET_NAMES:
        raise MethodError(f"{text}: the pipeline's presets are {', '.join(PRESET_NAMES)}")
    return _engine(text, EngineConfig(name="pipeline", pipeline=PipelineConfig(preset=preset)), registry)


def _net_engine(text: str, weights: str, device: str, precision: str, registry: Registry) -> Engine:
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
    return _engine(text, config, registry)


def _engine(text: str, config: EngineConfig, registry: Registry) -> Engine:
    """The daemon's engine for ``config`` (:func:`drdaemon.engines.build_engines`), one worker."""
    try:
        return build_engines(config, registry)[0]
    except Exception as exc:  # ConfigError, DeviceLost: both mean this method cannot run here
        raise MethodError(f"{text}: {exc}") from exc


def build_methods(
    texts: list[str],
    device: str = "auto",
    precision: str = "float32",
    registry: Registry = ENGINES,
    engine: EngineConfig | None = None,
) -> list[Method]:
    """Every ``--methods`` item's engine (:func:`build_method`); names twice or none are errors."""
    methods = [build_method(t, device, precision, registry, engine) for t in texts if t.strip()]
    labels = [m.label for m in methods]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise MethodError(f"methods named twice: {', '.join(duplicates)}")
    if not methods:
        raise MethodError("no methods given")
    return methods
