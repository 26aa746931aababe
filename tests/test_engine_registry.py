"""The engine registry: one table names every engine; an unknown name is an error, never a fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drdaemon.config import ConfigError, EngineConfig
from drdaemon.engines import (
    ENGINES,
    EngineEntry,
    build_checked_engines,
    build_engines,
    check_engine_name,
    reader_window,
)
from drdaemon.evaluate.baselines import MethodError, build_method
from tests.toy_engine import InvertEngine, build_invert

TOY = ENGINES.with_engine("invert", EngineEntry("the gray scale upside down (a test's toy)", build_invert))


def test_a_registered_engine_is_accepted_by_the_configuration_and_built() -> None:
    config = EngineConfig(name="invert")
    assert check_engine_name(config, TOY) == "invert"
    engine = build_checked_engines(config, TOY)[0]
    assert isinstance(engine, InvertEngine)
    frame = np.array([[0, 1000, 65535]], np.uint16)
    assert engine.enhance(frame).pixels.tolist() == [[65535, 64535, 0]]
    assert reader_window(config, TOY) == (config.low_percentile, config.high_percentile)


def test_a_registered_engine_is_an_evaluation_method_under_its_name() -> None:
    method = build_method("invert", registry=TOY)
    assert method.label == "invert" and isinstance(method.engine, InvertEngine)
    with pytest.raises(MethodError, match="unknown method 'invert'"):
        build_method("invert")  # not in the package's registry


def test_an_unregistered_name_is_a_configuration_error_naming_the_engines() -> None:
    # "gamma" once built an engine that silently behaved as the stretch.
    for name in ("gamma", "invert"):
        config = EngineConfig(name=name)
        for call in (check_engine_name, build_engines, build_checked_engines, reader_window):
            with pytest.raises(ConfigError, match=f"unknown engine '{name}'.*classical, he, identity, net, pipeline"):
                call(config)


def test_the_registry_refuses_a_name_twice() -> None:
    with pytest.raises(ValueError, match="taken"):
        TOY.with_engine("invert", EngineEntry("again", build_invert))
    with pytest.raises(ValueError, match="taken"):
        ENGINES.with_engine("auto", EngineEntry("not an engine", build_invert))


def test_every_registered_engine_builds_and_auto_picks_net_or_classical(tmp_path: Path) -> None:
    assert set(ENGINES.names()) == {"classical", "he", "stretch", "identity", "pipeline", "net"}
    for name in ENGINES.names():
        if name == "net":
            continue  # needs torch and weights; tests/test_net_engine.py builds it
        engine = build_engines(EngineConfig(name=name))[0]
        assert engine.name == name
    assert check_engine_name(EngineConfig()) == "classical"
    assert check_engine_name(EngineConfig(weights=tmp_path / "w.safetensors")) == "net"
    assert reader_window(EngineConfig(name="pipeline")) is None


def test_the_bench_offers_every_registered_engine_and_no_other() -> None:
    import argparse

    from drdaemon.bench.cli import add_bench_arguments

    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    for name in ENGINES.names():
        assert parser.parse_args(["--engine", name]).engine == name
    with pytest.raises(SystemExit):
        parser.parse_args(["--engine", "gamma"])
