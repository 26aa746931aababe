"""`drdaemon check-config` is a safe gate: what `run` refuses with exit 78, it refuses too, in the same words."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drdaemon.cli import main
from drdaemon.exits import EXIT_CONFIG, EXIT_OK
from drdaemon.folders.claim import WorkLock
from tests import testkit
from tests.testkit import NAMED_FOLDERS, metrics_on, net_engine

ERROR_HEADER = "drdaemon: configuration error\n"


def write_config(
    root: Path,
    port: int,
    extra: str = "",
    engine: str = 'name = "classical"\n',
    inbox: str = "inbox",
    create: bool = True,
) -> Path:
    """A config with every folder named (the inbox as ``inbox``), metrics on ``port`` and WARNING logs."""
    return testkit.write_config(
        root / "config.toml",
        folders=NAMED_FOLDERS.replace('"inbox"', f'"{inbox}"', 1) + f"create = {str(create).lower()}\n",
        engine=engine,
        watch="",
        metrics=metrics_on(port),
        logging='format = "json"\nlevel = "WARNING"\n',
        extra=extra,
    )


@pytest.fixture
def keep_signal_handlers() -> Iterator[None]:
    """`run` in-process installs its stop handlers; put the test runner's back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGIO)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def error_of(verb: str, config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The configuration error `verb` prints, after checking that it exits 78."""
    capsys.readouterr()
    status = main([verb, "--config", str(config)])
    err = capsys.readouterr().err
    assert status == EXIT_CONFIG, err
    assert ERROR_HEADER in err, err
    return err.split(ERROR_HEADER, 1)[1].strip()


def assert_same_refusal(config: Path, capsys: pytest.CaptureFixture[str], expected: str) -> None:
    from_run = error_of("run", config, capsys)
    from_check = error_of("check-config", config, capsys)
    assert expected in from_run
    assert from_run in from_check  # the very message run gives (check-config may add other findings)


def test_a_good_configuration_passes_every_check_and_leaves_no_probe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, 0)
    for name in ("inbox", "outbox", "archive", "failed", "work"):
        (tmp_path / name).mkdir()
    assert main(["check-config", "--config", str(config)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "start-up checks passed" in out and "engine: classical built on cpu" in out
    for name in ("inbox", "outbox", "archive", "failed", "work"):  # the probes are gone again
        assert list((tmp_path / name).iterdir()) == [], name


def test_check_config_creates_nothing_and_says_what_run_would_create(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_signal_handlers: None
) -> None:
    config = write_config(tmp_path, 0)  # folders.create = true, no folder exists yet
    assert main(["check-config", "--config", str(config)]) == EXIT_OK
    out = capsys.readouterr().out
    for name in ("inbox", "outbox", "archive", "failed", "work"):
        assert f"folders.{name}: {tmp_path / name} would be created at start" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]  # nothing on disk changed


def test_a_misspelled_inbox_is_an_error_naming_the_closest_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_signal_handlers: None
) -> None:
    (tmp_path / "example" / "inbox").mkdir(parents=True)
    config = write_config(tmp_path, 0, inbox="example/inobx", create=False)
    message = error_of("check-config", config, capsys)
    assert f"folders.inbox: {tmp_path / 'example' / 'inobx'} does not exist" in message
    assert f"did you mean {tmp_path / 'example' / 'inbox'}?" in message
    assert "folders.create = true" in message
    assert not (tmp_path / "example" / "inobx").exists() and not (tmp_path / "work").exists()
    assert_same_refusal(config, capsys, "did you mean")  # run refuses it in the same words, creating nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml", "example"]


def test_every_folder_the_daemon_creates_is_named_in_a_log_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from drdaemon.config import load_settings
    from drdaemon.logs import configure_logging
    from drdaemon.service.startup import prepare_folders

    settings = load_settings(write_config(tmp_path, 0))
    configure_logging(settings.logging.model_copy(update={"level": "INFO", "format": "json"}))
    capsys.readouterr()
    prepare_folders(settings.folders)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    created = {line["folder"]: line["path"] for line in lines if line.get("event") == "folder_created"}
    assert created == {name: str(tmp_path / name) for name in ("inbox", "outbox", "archive", "failed", "work")}


def test_a_weights_path_with_a_typo_fails_like_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_signal_handlers: None
) -> None:
    config = write_config(tmp_path, 0, engine='name = "net"\nweights = "weights/enhancer.safetensros"\n')
    assert_same_refusal(config, capsys, "engine.weights")


def test_an_engine_name_not_in_the_registry_fails_like_run_naming_the_engines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_signal_handlers: None
) -> None:
    config = write_config(tmp_path, 0, engine='name = "gamma"\n')  # once silently the stretch
    assert_same_refusal(config, capsys, "engine.name: unknown engine 'gamma'; the engines are: auto, classical, he")


def test_folders_a_rename_cannot_cross_fail_like_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_signal_handlers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, 0)
    real_rename = os.rename

    def cross_mount(
        source: str | os.PathLike[str], target: str | os.PathLike[str], *args: Any, **kwargs: Any
    ) -> None:  # archive on another mount (a bind mount or a share)
        if Path(target).parent == tmp_path / "archive":
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "rename", cross_mount)
    assert_same_refusal(config, capsys, "folders.archive")


def test_folders_on_two_filesystems_fail_like_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_signal_handlers: None
) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (/dev/shm) here")
    archive = Path(tempfile.mkdtemp(prefix="drd-archive-", dir=other))
    try:
        config = write_config(tmp_path, 0, extra="")
        text = config.read_text().replace('archive = "archive"', f'archive = "{archive}"')
        config.write_text(text)
        assert_same_refusal(config, capsys, "must be on one filesystem")
    finally:
        shutil.rmtree(archive, ignore_errors=True)


def test_a_metrics_port_already_taken_fails_like_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_signal_handlers: None
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = write_config(tmp_path, taken.getsockname()[1])
        assert_same_refusal(config, capsys, "metrics.port: cannot serve metrics")


def test_the_port_of_the_daemon_running_on_this_work_folder_is_not_a_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before a restart the running daemon holds both its work lock and the port; here this process plays it.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        config = write_config(tmp_path, held.getsockname()[1])
        (tmp_path / "work").mkdir()
        with WorkLock(tmp_path / "work"):
            assert main(["check-config", "--config", str(config)]) == EXIT_OK
    assert "held by the daemon running on this work folder" in capsys.readouterr().out


def test_every_failure_is_named_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = write_config(tmp_path, taken.getsockname()[1], engine='name = "net"\nweights = "absent.safetensors"\n')
        message = error_of("check-config", config, capsys)
    assert "engine.weights" in message and "metrics.port" in message


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_folder_the_service_user_cannot_write_fails(tmp_path: Path) -> None:
    # Folders made by root (say, by running check-config as root first), checked as an unprivileged user.
    root = Path(tempfile.mkdtemp(prefix="drd-owner-"))
    try:
        root.chmod(0o755)
        config = write_config(root, 0)
        config.chmod(0o644)
        for name in ("inbox", "outbox", "archive", "failed", "work"):
            (root / name).mkdir(mode=0o755)
        result = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-m",
                "drdaemon",
                "check-config",
                "--config",
                str(config),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=testkit.REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert result.returncode == EXIT_CONFIG, result.stdout + result.stderr
        assert "folders.work" in result.stderr and "is not writable by" in result.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_weights_whose_provenance_was_edited_fail_like_run_and_good_ones_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_signal_handlers: None
) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "enhancer.safetensors"
    testkit.write_weights(weights, scale=4, provenance={"run": "unit-test"})
    config = write_config(tmp_path, 0, engine=net_engine(str(weights)))
    assert main(["check-config", "--config", str(config)]) == EXIT_OK
    assert "engine: net built on cpu" in capsys.readouterr().out
    with safe_open(str(weights), framework="pt") as fh:
        metadata = dict(fh.metadata())
    metadata["provenance"] = '{"run": "forged"}'
    save_file(load_file(str(weights)), str(weights), metadata=metadata)
    assert_same_refusal(config, capsys, "provenance")


def test_the_default_metrics_port_is_held_by_another_process_while_the_tests_run(default_metrics_port: int) -> None:
    # tests/conftest.py holds 127.0.0.1:9464 (the default, and config.example.toml's) from a process of
    # its own unless something else already does, as a daemon from the README's first command would:
    # a test that binds or configures it fails here and everywhere alike.
    with socket.socket() as probe, pytest.raises(OSError) as caught:
        probe.bind(("127.0.0.1", default_metrics_port))
    assert caught.value.errno == errno.EADDRINUSE
