"""`drdaemon selftest`: the example configuration passes, a broken one fails with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from drdaemon.cli import main
from drdaemon.exits import EXIT_CONFIG, EXIT_OK, EXIT_SOME_FAILED
from drdaemon.service import selftest as selftest_module
from tests.testkit import REPO


def example_config(root: Path, extra: str = "") -> Path:
    """config.example.toml as shipped, its example/ folders moved under ``root`` and any free metrics port."""
    text = (REPO / "config.example.toml").read_text(encoding="utf-8")
    assert text.count('"example/') == 5
    text = text.replace('"example/', f'"{root}/').replace("port = 9464", "port = 0")
    config = root / "config.toml"
    config.write_text(text + extra, encoding="utf-8")
    return config


def listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"dir") for p in sorted(root.rglob("*"))}


def test_the_example_configuration_passes_and_leaves_its_folders_as_they_were(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = example_config(tmp_path)
    assert main(["selftest", "--config", str(config), "--size", "128x96"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "selftest passed: 128 x 96 frame, engine classical on cpu" in out
    assert "latency" in out and "as the sidecar says" in out
    for name in ("inbox", "outbox", "archive", "failed", "work"):  # the temporary tree is gone again
        assert list((tmp_path / name).iterdir()) == [], name


def test_a_dry_run_on_the_real_tree_leaves_nothing_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = example_config(tmp_path)
    for name in ("inbox", "outbox", "archive"):
        (tmp_path / name).mkdir()
    (tmp_path / "outbox" / "earlier.tif").write_bytes(b"a result of the station's")
    (tmp_path / "archive" / "earlier.tif").write_bytes(b"a raw frame of the station's")
    before = listing(tmp_path)
    assert main(["selftest", "--config", str(config), "--dry-run", "--size", "96x64"]) == EXIT_OK
    assert "dry run, nothing left behind" in capsys.readouterr().out
    after = listing(tmp_path)
    assert after == before | {k: v for k, v in after.items() if k not in before and v == b"dir"}  # folders created


def test_a_broken_weights_path_fails_as_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = example_config(tmp_path)
    config.write_text(
        config.read_text().replace(
            '# weights = "weights/enhancer.safetensors"', 'weights = "weights/enhancer.safetensor"'
        )
    )
    assert main(["selftest", "--config", str(config)]) == EXIT_CONFIG
    assert "engine.weights" in capsys.readouterr().err


def test_an_output_format_the_frame_cannot_take_fails_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = example_config(tmp_path)
    text = config.read_text()
    assert text.count('\nformat = "auto"\n') == 1  # [output] format, the only key of that name
    config.write_text(text.replace('\nformat = "auto"\n', '\nformat = "dicom"\n'))
    assert main(["selftest", "--config", str(config), "--size", "96x64"]) == EXIT_SOME_FAILED
    err = capsys.readouterr().err
    assert "selftest FAILED" in err and "unsupported" in err and "output.format = 'dicom'" in err
    for name in ("inbox", "outbox", "archive", "failed", "work"):
        assert list((tmp_path / name).iterdir()) == [], name


def test_an_output_that_does_not_match_its_sidecar_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = example_config(tmp_path)
    monkeypatch.setattr(selftest_module, "file_sha256", lambda _path: "0" * 64)  # the output on disk "changed"
    assert main(["selftest", "--config", str(config), "--size", "96x64"]) == EXIT_SOME_FAILED
    assert "does not hash as its sidecar's output.sha256 says" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["12x12", "large"])
def test_a_bad_size_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], size: str) -> None:
    assert main(["selftest", "--config", str(example_config(tmp_path)), "--size", size]) == EXIT_CONFIG
    assert "--size" in capsys.readouterr().err
