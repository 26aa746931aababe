"""Configuration: the example file, environment overrides, and errors a user can act on."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from drdaemon.cli import main, settings_to_toml
from drdaemon.config import ConfigError, Settings, load_settings
from drdaemon.exits import EXIT_CONFIG
from tests.testkit import REPO

EXAMPLE = REPO / "config.example.toml"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_documents_every_key_and_loads() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for table, field in Settings.model_fields.items():
        assert f"[{table}]" in text, table
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel), table
        for key, inner in model.model_fields.items():
            sub = next(
                (
                    t
                    for t in (inner.annotation, *typing.get_args(inner.annotation))
                    if isinstance(t, type) and issubclass(t, BaseModel)
                ),
                None,
            )
            if sub is not None:  # a sub-table such as [input.raw], possibly commented out
                assert re.search(rf"^#?\s*\[{table}\.{key}\]", text, re.MULTILINE), f"[{table}.{key}] undocumented"
                for sub_key in sub.model_fields:
                    assert re.search(rf"^#?\s*{sub_key} = ", text, re.MULTILINE), f"{table}.{key}.{sub_key}"
                continue
            # Each key appears as an assignment (possibly commented out) with a comment nearby.
            assert re.search(rf"^#?\s*{key} = ", text, re.MULTILINE), f"{table}.{key} undocumented"
    settings = load_settings(EXAMPLE)
    assert settings.engine.effective_name() == "classical"  # runs with no weights and no GPU
    assert settings.folders.inbox == REPO / "example" / "inbox"


def test_relative_folders_resolve_against_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    config = write(tmp_path / "conf" / "d.toml", '[folders]\ninbox = "in"\noutbox = "/abs/out"\n')
    monkeypatch.chdir("/")
    settings = load_settings(config)
    assert settings.folders.inbox == tmp_path / "conf" / "in"
    assert settings.folders.outbox == Path("/abs/out")
    assert settings.folders.work == tmp_path / "conf" / "work"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "d.toml", '[folders]\ninbox = "in"\n[watch]\nstability_wait_s = 3.0\n')
    monkeypatch.setenv("DRDAEMON_FOLDERS__INBOX", "/data/in")
    monkeypatch.setenv("DRDAEMON_WATCH__STABILITY_WAIT_S", "0.5")
    monkeypatch.setenv("DRDAEMON_ENGINE__WARM_UP_FRAME_SIZE", "[2333, 5732]")
    settings = load_settings(config)
    assert settings.folders.inbox == Path("/data/in")
    assert settings.watch.stability_wait_s == 0.5
    assert settings.engine.warm_up_frame_size == (2333, 5732)


@pytest.mark.parametrize(
    "text, key, hint",
    [
        ("[watch]\nstabilty_wait_s = 1\n", "watch.stabilty_wait_s", "unknown key"),
        ("[colour]\nx = 1\n", "colour", "unknown key"),
        ("[engine]\nclahe_tile_grid = 0\n", "engine.clahe_tile_grid", "greater than or equal to 1"),
        ("[engine]\nwarm_up_frame_size = [2333]\n", "engine.warm_up_frame_size", "2333"),
        ('[output]\ncompression = "jpeg"\n', "output.compression", "lzw"),
        ("[metrics\nport = 1\n", "cannot parse", "d.toml"),
    ],
    ids=["misspelt-key", "unknown-table", "out-of-range", "half-a-size", "bad-choice", "bad-toml"],
)
def test_config_errors_exit_78_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str, hint: str
) -> None:
    config = write(tmp_path / "d.toml", text)
    with pytest.raises(ConfigError):
        load_settings(config)
    assert main(["check-config", "--config", str(config)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert key in err and hint in err
    assert len(err.splitlines()) < 25  # one screen


def test_missing_config_file_exits_78_from_a_real_process(tmp_path: Path) -> None:
    for verb in ("run", "check-config"):
        result = subprocess.run(
            [sys.executable, "-m", "drdaemon", verb, "--config", str(tmp_path / "absent.toml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == EXIT_CONFIG
        assert "not found" in result.stderr and "absent.toml" in result.stderr


def test_check_config_prints_the_effective_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "d.toml", '[folders]\ninbox = "in"\ncreate = true\n[output]\npreview_png = true\n')
    monkeypatch.setenv("DRDAEMON_METRICS__PORT", "9999")
    monkeypatch.setenv("DRDAEMON_METRICS__ENABLED", "false")  # no port is bound: the test needs none free
    assert main(["check-config", "--config", str(config)]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["folders"]["inbox"] == str(tmp_path / "in")
    assert printed["output"]["preview_png"] is True
    assert printed["metrics"]["port"] == 9999
    assert printed["engine"]["name"] == "auto"
    # What it prints is itself a valid configuration that means the same thing.
    again = write(tmp_path / "again.toml", settings_to_toml(load_settings(config)))
    assert load_settings(again) == load_settings(config)


def test_an_error_from_an_environment_variable_names_the_variable_and_the_closest_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "d.toml", '[folders]\ncreate = true\n[engine]\nname = "classical"\n[metrics]\nport = 0\n')
    monkeypatch.setenv("DRDAEMON_ENGINE__NAME", "clasical")  # the example: an engine name (a registry)
    assert main(["check-config", "--config", str(config)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "engine.name (from the environment variable DRDAEMON_ENGINE__NAME): unknown engine 'clasical'" in err
    assert "did you mean 'classical'?" in err
    monkeypatch.setenv("DRDAEMON_ENGINE__NAME", "classical")
    monkeypatch.setenv("DRDAEMON_OUTPUT__COMPRESSION", "lzww")  # a choice the configuration itself checks
    assert main(["check-config", "--config", str(config)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "invalid configuration in the environment:" in err and "d.toml:" not in err  # the file is not blamed
    assert "output.compression (from the environment variable DRDAEMON_OUTPUT__COMPRESSION)" in err
    assert "did you mean 'lzw'?" in err


def test_a_misspelt_key_in_the_file_gets_the_closest_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "d.toml", '[watch]\nstabilty_wait_s = 1\n[output]\ncompression = "jpeg"\n')
    monkeypatch.setenv("DRDAEMON_ENGINE__GAMA", "0.8")
    assert main(["check-config", "--config", str(config)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"invalid configuration in {config} and the environment:" in err
    assert "watch.stabilty_wait_s: unknown key; did you mean 'stability_wait_s'?" in err
    assert (
        "engine.gama (from the environment variable DRDAEMON_ENGINE__GAMA): unknown key; did you mean 'gamma'?" in err
    )
    assert "output.compression: Input should be" in err and "(got 'jpeg')" in err
