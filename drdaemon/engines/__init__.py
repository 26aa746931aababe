"""Enhancement engines; the registry (:mod:`.registry`) names them and builds the workers' engines."""

from __future__ import annotations

from drdaemon.engines.base import Engine, Enhanced
from drdaemon.engines.classical import ClassicalEngine
from drdaemon.engines.registry import (
    ENGINES,
    EngineEntry,
    Registry,
    build_checked_engines,
    build_engines,
    check_engine_name,
    reader_window,
)

__all__ = [
    "ENGINES",
    "ClassicalEngine",
    "Engine",
    "EngineEntry",
    "Enhanced",
    "Registry",
    "build_checked_engines",
    "build_engines",
    "check_engine_name",
    "reader_window",
]
