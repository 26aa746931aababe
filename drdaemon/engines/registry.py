"""The engine registry: every name ``engine.name`` accepts, and how each engine is built.

One table, :data:`ENGINES`, maps each name to an :class:`EngineEntry`: a one-line summary and
a builder that turns the ``[engine]`` table into the workers' engines. The configuration's
accepted names (:func:`check_engine_name`), the daemon's and ``drdaemon enhance``'s engines
(:func:`build_engines`), the evaluation's methods (:mod:`drdaemon.evaluate.baselines`) and the
bench's ``--engine`` choices all come from this table. Dispatch is exhaustive: a name that is
not in the table is a configuration error naming the known ones, never a fallback.

``auto`` is not an engine but a choice between two (``net`` when ``engine.weights`` is set,
else ``classical``; :meth:`drdaemon.config.EngineConfig.effective_name`).

Adding an engine:

1. one new module under ``drdaemon/engines/`` with a class that meets
   :class:`drdaemon.engines.base.Engine` (``name``, ``device``, ``weights_sha256``,
   ``enhance``, ``warm_up``) and a builder ``def build_x(config: EngineConfig) -> list[Engine]``;
2. one entry in :data:`ENGINES`: ``"x": EngineEntry("what it does", build_x)``.

The tests register a toy engine the same way (``tests/toy_engine.py``) through
:meth:`Registry.with_engine`, which returns a new registry instead of changing this one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType

from drdaemon.config import ConfigError, EngineConfig, closest_choice, from_environment
from drdaemon.defaults import ClassicalMethod
from drdaemon.engines.base import Engine
from drdaemon.engines.classical import ClassicalEngine
from drdaemon.engines.learned import build_learned_engines
from drdaemon.errors import DeviceLost

#: Builds the workers' engines (one per worker) from the ``[engine]`` table.
Builder = Callable[[EngineConfig], list[Engine]]

#: Not an engine: ``net`` with ``engine.weights``, else ``classical``.
AUTO = "auto"


@dataclass(frozen=True)
class EngineEntry:
    """One registered engine."""

    summary: str
    build: Builder
    #: Whether the reader measures the frame's percentile window for it (``engine.low_percentile``,
    #: ``engine.high_percentile``); False for engines whose steps measure their own (the pipeline).
    reads_window: bool = True


@dataclass(frozen=True)
class Registry:
    """Engine names and their entries; immutable (:meth:`with_engine` returns a new one)."""

    entries: Mapping[str, EngineEntry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", MappingProxyType(dict(self.entries)))

    def with_engine(self, name: str, entry: EngineEntry) -> Registry:
        """This registry plus ``name``; refuses a name already taken or ``auto``."""
        if name in self.entries or name == AUTO:
            raise ValueError(f"engine name {name!r} is taken")
        return Registry({**self.entries, name: entry})

    def names(self) -> tuple[str, ...]:
        """The registered engines' names, sorted."""
        return tuple(sorted(self.entries))

    def accepted_names(self) -> tuple[str, ...]:
        """What ``engine.name`` accepts: ``auto`` and every registered engine."""
        return (AUTO, *self.names())

    def entry(self, name: str) -> EngineEntry:
        """The entry of ``name``; :class:`~drdaemon.config.ConfigError` naming the known ones otherwise."""
        try:
            return self.entries[name]
        except KeyError:
            raise ConfigError(
                f"engine.name{from_environment('engine.name')}: unknown engine {name!r}; the engines are: "
                f"{', '.join(self.accepted_names())}{closest_choice(name, self.accepted_names())}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def build_classical(config: EngineConfig, method: ClassicalMethod) -> list[Engine]:
    """One :class:`ClassicalEngine` running ``method`` with the table's window, CLAHE and gamma."""
    return [
        ClassicalEngine(
            method=method,
            low_percentile=config.low_percentile,
            high_percentile=config.high_percentile,
            clahe_clip_limit=config.clahe_clip_limit,
            clahe_tile_grid=config.clahe_tile_grid,
            gamma=config.gamma,
        )
    ]


def build_pipeline(config: EngineConfig) -> list[Engine]:
    """The pipeline engine of ``[engine.pipeline]``: one, or one per learned-engine worker with ``net`` steps."""
    from drdaemon.engines.pipeline import build_pipeline_engines

    return [*build_pipeline_engines(config)]


def build_net(config: EngineConfig) -> list[Engine]:
    """The learned engine's workers (torch, or ONNX Runtime for ``.onnx`` weights, imported only here)."""
    return build_learned_engines(config)


#: Every engine ``engine.name`` names. Add an engine here (see the module's docstring).
ENGINES = Registry(
    {
        "classical": EngineEntry(
            "CLAHE on the percentile-windowed 16-bit frame, then engine.gamma",
            partial(build_classical, method="classical"),
        ),
        "he": EngineEntry(
            "global histogram equalisation over 65536 levels of the windowed frame, then engine.gamma",
            partial(build_classical, method="he"),
        ),
        "stretch": EngineEntry(
            "the percentile window stretched to the full range, then engine.gamma",
            partial(build_classical, method="stretch"),
        ),
        "identity": EngineEntry(
            "the frame as uint16, untouched (a baseline)", partial(build_classical, method="identity")
        ),
        "pipeline": EngineEntry(
            "the steps of [engine.pipeline] in order, or a preset", build_pipeline, reads_window=False
        ),
        "net": EngineEntry("the learned enhancer (engine.weights, or the shipped weights)", build_net),
    }
)


def check_engine_name(config: EngineConfig, registry: Registry = ENGINES) -> str:
    """The engine that ``config`` runs (``auto`` resolved); ConfigError when it is not registered."""
    name = config.effective_name()
    registry.entry(name)
    return name


def build_engines(config: EngineConfig, registry: Registry = ENGINES) -> list[Engine]:
    """One engine per worker: one for the CPU engines, one per device (and worker) for ``net``."""
    return registry.entry(config.effective_name()).build(config)


def build_checked_engines(config: EngineConfig, registry: Registry = ENGINES) -> list[Engine]:
    """:func:`build_engines` for the daemon and ``drdaemon enhance``: a failure to build other
    than a lost device is a configuration problem (exit 78), reported naming the engine."""
    entry = registry.entry(config.effective_name())
    try:
        return entry.build(config)
    except (DeviceLost, ConfigError):
        raise
    except Exception as exc:
        raise ConfigError(
            f"engine: cannot build the {config.effective_name()!r} engine: {type(exc).__name__}: {exc}"
        ) from exc


def reader_window(config: EngineConfig, registry: Registry = ENGINES) -> tuple[float, float] | None:
    """The percentile window the reader measures for this engine; None for an engine whose steps
    measure their own (the pipeline's ``normalise``)."""
    if registry.entry(config.effective_name()).reads_window:
        return (config.low_percentile, config.high_percentile)
    return None
