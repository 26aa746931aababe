"""Enhancement engines; :func:`build_engines` turns the ``[engine]`` table into workers' engines."""

from __future__ import annotations

from drdaemon.config import ConfigError, EngineConfig
from drdaemon.engines.base import Engine, Enhanced
from drdaemon.engines.classical import ClassicalEngine
from drdaemon.errors import DeviceLost


def build_engines(config: EngineConfig) -> list[Engine]:
    """One engine per worker: one for the CPU engines, one per device (and worker) for ``net``."""
    name = config.effective_name()
    if name == "net":
        from drdaemon.engines.net import build_net_engines  # torch is imported only when needed

        return [*build_net_engines(config)]
    if name == "pipeline":
        from drdaemon.engines.pipeline import build_pipeline_engine

        return [build_pipeline_engine(config.pipeline)]
    return [
        ClassicalEngine(
            method=name,
            low_percentile=config.low_percentile,
            high_percentile=config.high_percentile,
            clahe_clip_limit=config.clahe_clip_limit,
            clahe_tile_grid=config.clahe_tile_grid,
            gamma=config.gamma,
        )
    ]


def build_checked_engines(config: EngineConfig) -> list[Engine]:
    """:func:`build_engines` for the daemon and ``drdaemon enhance``: a failure to build other
    than a lost device is a configuration problem (exit 78), reported naming the engine."""
    try:
        return build_engines(config)
    except (DeviceLost, ConfigError):
        raise
    except Exception as exc:
        raise ConfigError(
            f"engine: cannot build the {config.effective_name()!r} engine: {type(exc).__name__}: {exc}"
        ) from exc


__all__ = ["ClassicalEngine", "Engine", "Enhanced", "build_checked_engines", "build_engines"]
