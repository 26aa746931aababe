"""ONNX export, INT8 quantisation and the ONNX Runtime backend of the learned engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra (pip install 'drdaemon[onnx]') is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra (pip install 'drdaemon[onnx]') is not installed")

from drdaemon.config import ConfigError, EngineConfig
from drdaemon.engines import build_engines
from drdaemon.errors import FrameError, Reason
from drdaemon.io.onnx_model import export_onnx, quantize_onnx, read_onnx_model
from drdaemon.io.weights import WeightsError, load_weights
from tests.testkit import net_engine, run_daemon_on, shaped_frames, write_config, write_weights


def rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Random three-channel weights at illumination scale 2 (the fold and the shrink both traced) and their export."""
    root = tmp_path_factory.mktemp("onnx")
    weights = root / "enhancer.safetensors"
    write_weights(weights, in_ch=3, scale=2, provenance={"name": "onnx-test"})
    model = root / "enhancer.onnx"
    export_onnx(load_weights(weights), model)
    return weights, model


def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(500, 60000, shape).astype(np.uint16) for shape in [(37, 53), (130, 67), (9, 5)]]


def test_export_then_run_gives_the_pytorch_output_on_odd_sizes(exported: tuple[Path, Path]) -> None:
    weights, model = exported
    torch_engine = build_engines(EngineConfig(name="net", weights=weights, devices=["cpu"], precision="float32"))[0]
    onnx_engine = build_engines(EngineConfig(name="net", weights=model, devices=["cpu"]))[0]
    for frame in frames():
        expected, got = torch_engine.enhance(frame), onnx_engine.enhance(frame)
        assert got.pixels.dtype == np.uint16 and got.pixels.shape == frame.shape
        assert rms(expected.pixels, got.pixels) <= 1.0
        assert got.parameters["window"] == expected.parameters["window"]
        assert got.parameters["backend"] == "onnxruntime"
        assert got.parameters["provider"] == "CPUExecutionProvider"
        assert got.parameters["illumination_scale"] == 2


def test_the_metadata_names_the_weights_scale_and_normalisation(exported: tuple[Path, Path]) -> None:
    weights, model = exported
    info = read_onnx_model(model)
    loaded = load_weights(weights)
    assert info.source_weights_sha256 == loaded.sha256 and info.weights_name == "onnx-test"
    assert info.spec.illumination_scale == 2 and info.precision == "float32"
    assert (info.low_percentile, info.high_percentile) == (0.5, 99.5)


def test_quantised_model_runs_and_stays_within_its_bound(exported: tuple[Path, Path], tmp_path: Path) -> None:
    _, model = exported
    rng = np.random.default_rng(2)
    calibration = [rng.integers(500, 60000, (200, 180)).astype(np.uint16) for _ in range(2)]
    int8 = quantize_onnx(model, tmp_path / "int8.onnx", calibration, "qoperator")
    assert int8.precision == "int8" and int8.quantization == "qoperator"
    float_engine = build_engines(EngineConfig(name="net", weights=model, devices=["cpu"]))[0]
    int8_engine = build_engines(EngineConfig(name="net", weights=int8.path, devices=["cpu"]))[0]
    frame = rng.integers(500, 60000, (121, 97)).astype(np.uint16)
    result = int8_engine.enhance(frame)
    assert result.parameters["precision"] == "int8"
    assert rms(float_engine.enhance(frame).pixels, result.pixels) <= 64


def test_a_frame_over_the_memory_budget_fails_saying_the_tiler_is_pytorch_only(exported: tuple[Path, Path]) -> None:
    _, model = exported
    engine = build_engines(EngineConfig(name="net", weights=model, devices=["cpu"], memory_budget_mb=64))[0]
    with pytest.raises(FrameError) as caught:
        engine.enhance(np.zeros((3000, 3000), np.uint16))
    assert caught.value.reason == Reason.TOO_LARGE
    assert "memory_budget_mb" in str(caught.value) and "safetensors" in str(caught.value)


def test_providers_that_are_not_installed_are_configuration_errors(exported: tuple[Path, Path]) -> None:
    _, model = exported
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ConfigError, match="onnxruntime-gpu"):
            build_engines(EngineConfig(name="net", weights=model, devices=["cuda:0"]))
    with pytest.raises(ConfigError, match="TensorRT does not run on the CPU"):
        build_engines(EngineConfig(name="net", weights=model, devices=["cpu"], tensorrt=True))


def test_corrupt_and_foreign_onnx_files_are_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    with pytest.raises(WeightsError, match=r"cannot read corrupt\.onnx as an ONNX model"):
        read_onnx_model(corrupt)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    with pytest.raises(WeightsError, match="not an enhancer exported by drdaemon"):
        read_onnx_model(foreign)


@pytest.mark.parametrize("kind", ["corrupt", "foreign"])
def test_check_config_exits_78_on_a_bad_onnx_file(exported: tuple[Path, Path], tmp_path: Path, kind: str) -> None:
    _, model = exported
    bad = tmp_path / "bad.onnx"
    data = model.read_bytes()
    # corrupt: the file cut short; foreign: the same graph with its drdaemon marker renamed
    bad.write_bytes(
        data[: len(data) // 3] if kind == "corrupt" else data.replace(b"drdaemon_format", b"drdaemon_formak")
    )
    config = write_config(
        tmp_path / "daemon.toml", folders="", engine=net_engine(bad.name, precision=None), watch="", logging=""
    )
    done = subprocess.run(
        [sys.executable, "-m", "drdaemon", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 78, done.stderr
    assert "engine.weights" in done.stderr and "bad.onnx" in done.stderr


@pytest.mark.slow
def test_daemon_runs_an_onnx_model_end_to_end(exported: tuple[Path, Path], tmp_path: Path) -> None:
    _, model = exported
    (tmp_path / model.name).write_bytes(model.read_bytes())
    config = write_config(tmp_path / "daemon.toml", engine=net_engine(model.name, precision=None))
    outbox, output = run_daemon_on(tmp_path, config, shaped_frames([(61, 83)]))
    sidecar = json.loads((outbox / "f0.tif.json").read_text())
    assert sidecar["engine"]["parameters"]["backend"] == "onnxruntime", output
    assert sidecar["engine"]["parameters"]["provider"] == "CPUExecutionProvider"
    assert sidecar["engine"]["weights_sha256"] == read_onnx_model(model).sha256


def test_export_onnx_command_writes_a_model_and_refuses_missing_calibration(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    weights, _ = exported
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "drdaemon",
            "export-onnx",
            str(weights),
            "--out",
            str(tmp_path / "m.onnx"),
            "--quantize",
            "int8",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 78 and "--calibration" in done.stderr
