"""The learned network as a pipeline step (``op = "net"``): the same pixels as ``engine.name = "net"``
when it is the only step, its place among other steps, its configuration, the daemon and the evaluation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from drdaemon import physics
from drdaemon.cli import main
from drdaemon.config import ConfigError, EngineConfig, PipelineConfig, load_settings
from drdaemon.defaults import SHIPPED_WEIGHTS
from drdaemon.engines import build_checked_engines, build_engines
from drdaemon.engines.base import Engine
from drdaemon.engines.pipeline import PipelineEngine
from drdaemon.evaluate.cli import main as evaluate_main
from drdaemon.exits import EXIT_CONFIG
from drdaemon.io.durable import file_sha256
from drdaemon.kernels.window import image_to_u16, u16_to_image
from drdaemon.pipeline import steps as s
from tests.testkit import run_daemon_on, write_weights


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    """A real-ish frame: the physics generator's single exposure (starved thick sections, clipped thin ones)."""
    return physics.generate_one(seed=5, subset=2, index=0, height=144, width=176)[0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "enhancer.safetensors"
    write_weights(path, scale=2, seed=0)
    return path


def one_engine(config: EngineConfig) -> Engine:
    engines = build_checked_engines(config)
    assert len(engines) == 1  # on the CPU: one worker
    return engines[0]


def net_pipeline(*steps: s.Step) -> EngineConfig:
    return EngineConfig(name="pipeline", devices=["cpu"], pipeline=PipelineConfig(steps=list(steps)))


# -- the same pixels as engine.name = "net" -----------------------------------------------------


@pytest.mark.parametrize("precision", ["float32", "auto", "bfloat16"])
@pytest.mark.parametrize("shipped", [False, True])
def test_a_pipeline_of_one_net_step_gives_the_net_engines_pixels_bit_for_bit(
    frame: np.ndarray, weights: Path, precision: str, shipped: bool
) -> None:
    path = None if shipped else weights
    net = one_engine(EngineConfig(name="net", weights=path, devices=["cpu"], precision=precision))
    pipeline = one_engine(net_pipeline(s.NetStep(weights=path, precision=precision)))
    expected, got = net.enhance(frame), pipeline.enhance(frame)
    assert np.array_equal(got.pixels, expected.pixels)
    assert got.pixels.dtype == np.uint16 and got.pixels.std() > 0
    assert not np.array_equal(got.pixels, image_to_u16(u16_to_image(frame)))  # the network did something
    step = got.parameters["steps"][0]
    assert step["engine"] == expected.parameters  # the net engine's own record, the precision that ran included
    assert step["engine"]["precision"] == ("bfloat16" if precision == "auto" else precision)
    assert step["precision"] == precision and step["backend"] == "pytorch"
    assert (
        step["weights_sha256"] == pipeline.weights_sha256 == net.weights_sha256 == file_sha256(path or SHIPPED_WEIGHTS)
    )
    assert pipeline.device == net.device == "cpu"


def test_the_pipelines_sixteen_bit_image_rounds_back_to_the_same_levels() -> None:
    """What makes the sole-step case exact: every level survives the float image and back."""
    levels = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    assert np.array_equal(image_to_u16(u16_to_image(levels)), levels)


def test_the_written_outputs_of_enhance_are_identical(tmp_path: Path, frame: np.ndarray, weights: Path) -> None:
    source = tmp_path / "frame.tif"
    tifffile.imwrite(source, frame)
    configs = {
        "net": f'[engine]\nname = "net"\nweights = "{weights}"\ndevices = ["cpu"]\n',
        "pipeline": f'[engine]\nname = "pipeline"\ndevices = ["cpu"]\n[[engine.pipeline.steps]]\nop = "net"\nweights = "{weights}"\n',
    }
    written = {}
    for name, text in configs.items():
        config = tmp_path / f"{name}.toml"
        config.write_text(text + '[logging]\nlevel = "WARNING"\n')
        assert main(["enhance", str(source), "--config", str(config), "--out", str(tmp_path / name)]) == 0
        written[name] = tifffile.imread(tmp_path / name / "frame.tif")
        sidecar = json.loads((tmp_path / name / "frame.tif.json").read_text())
        assert sidecar["engine"]["name"] == name and sidecar["engine"]["weights_sha256"] == file_sha256(weights)
    assert written["net"].dtype == np.uint16 and np.array_equal(written["net"], written["pipeline"])


# -- among other steps ----------------------------------------------------------------------


def test_normalise_net_nlm_records_every_step_and_the_net_steps_timings(frame: np.ndarray, weights: Path) -> None:
    engine = one_engine(net_pipeline(s.NormaliseStep(), s.NetStep(weights=weights), s.NlmStep()))
    result = engine.enhance(frame)
    steps = result.parameters["steps"]
    assert [step["op"] for step in steps] == ["normalise", "net", "nlm"]
    assert steps[0]["window"][1] > 1.0  # measured in the frame's units
    assert steps[1]["weights"] == str(weights) and steps[1]["weights_sha256"] == file_sha256(weights)
    low, high = steps[1]["engine"]["window"]
    assert 0.0 <= low < high <= 1.0  # the net step windows the normalised image, on the [0, 1] scale
    assert steps[1]["engine"]["illumination_scale"] == 2 and steps[1]["engine"]["precision"] == "bfloat16"
    assert steps[2]["h_used"] > 0
    assert {"step0_normalise", "step1_net", "step1_net_compute", "step2_nlm", "compute", "upload"} <= set(
        result.timings
    )
    assert result.timings["compute"] == result.timings["step1_net_compute"]
    # the denoiser after the network sees the network's output: not the same frame as the network alone
    alone = one_engine(net_pipeline(s.NormaliseStep(), s.NetStep(weights=weights))).enhance(frame).pixels
    assert result.pixels.shape == frame.shape and not np.array_equal(result.pixels, alone)


def test_two_net_steps_with_other_weights_record_both_and_a_combined_hash(
    tmp_path: Path, frame: np.ndarray, weights: Path
) -> None:
    second = tmp_path / "second.safetensors"
    write_weights(second, seed=1)
    engine = one_engine(net_pipeline(s.NetStep(weights=weights), s.GammaStep(gamma=0.8), s.NetStep(weights=second)))
    steps = engine.enhance(frame).parameters["steps"]
    digests = [file_sha256(weights), file_sha256(second)]
    assert [steps[0]["weights_sha256"], steps[2]["weights_sha256"]] == digests
    assert engine.weights_sha256 == hashlib.sha256(",".join(digests).encode()).hexdigest()
    same = one_engine(net_pipeline(s.NetStep(weights=weights), s.NetStep(weights=weights, precision="float32")))
    assert same.weights_sha256 == file_sha256(weights)


def test_the_weights_are_loaded_once_when_the_engine_is_built(
    frame: np.ndarray, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drdaemon.io.weights import load_weights

    loads: list[Path] = []

    def counting(path: Path, allow_pickle: bool = False) -> object:
        loads.append(Path(path))
        return load_weights(path, allow_pickle=allow_pickle)

    monkeypatch.setattr("drdaemon.engines.net.load_weights", counting)
    engine = one_engine(net_pipeline(s.NormaliseStep(), s.NetStep(weights=weights)))
    warmed: list[str] = []
    assert isinstance(engine, PipelineEngine)
    runner = engine.networks[1]
    monkeypatch.setattr(runner.engine, "warm_up", lambda: warmed.append("net"))
    engine.warm_up()
    for _ in range(3):
        engine.enhance(frame)
    assert loads == [weights] and warmed == ["net"]


def test_a_net_step_without_its_network_says_so() -> None:
    from drdaemon.pipeline.apply import apply_step

    with pytest.raises(ValueError, match="loaded at start-up"):
        apply_step(s.NetStep(), np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="loaded at start-up"):
        PipelineEngine((s.NetStep(),)).enhance(np.zeros((8, 8), np.uint16))


# -- configuration --------------------------------------------------------------------------


def test_relative_weights_resolve_against_the_configuration_folder(tmp_path: Path, weights: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "w.safetensors").write_bytes(weights.read_bytes())
    config = tmp_path / "d.toml"
    config.write_text(
        '[engine]\nname = "pipeline"\n[[engine.pipeline.steps]]\nop = "net"\nweights = "models/w.safetensors"\n'
    )
    step = load_settings(config).engine.pipeline.steps[0]
    assert isinstance(step, s.NetStep) and step.weights == tmp_path / "models" / "w.safetensors"
    assert step.precision == "auto" and step.low_percentile == 0.5 and step.high_percentile == 99.5


def test_the_configuration_hash_counts_the_weights_by_content_and_the_precision(tmp_path: Path, weights: Path) -> None:
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(weights.read_bytes())
    a = net_pipeline(s.NetStep(weights=weights)).configuration_sha256()
    assert net_pipeline(s.NetStep(weights=copy)).configuration_sha256() == a
    assert net_pipeline(s.NetStep(weights=weights, precision="float32")).configuration_sha256() != a


@pytest.mark.parametrize(
    ("step", "named"),
    [
        ('op = "net"\nprecision = "half"\n', "engine.pipeline.steps.1.net.precision: Input should be"),
        (
            'op = "net"\nweight = "w.safetensors"\n',
            "engine.pipeline.steps.1.net.weight: unknown key",
        ),
        ('op = "net"\nlow_percentile = 60\n', "engine.pipeline.steps.1.net.low_percentile"),
        (
            'op = "net"\nweights = "missing.safetensors"\n',
            "engine.pipeline.steps.1.net.weights: weights file not found",
        ),
        ('op = "net"\nweights = "w.pt"\n', "engine.pipeline.steps.1.net.weights: w.pt is not a .safetensors file"),
    ],
)
def test_a_bad_net_step_exits_78_naming_the_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], step: str, named: str
) -> None:
    (tmp_path / "w.pt").write_bytes(b"not a checkpoint")
    config = tmp_path / "d.toml"
    config.write_text(
        '[folders]\ncreate = true\n[metrics]\nenabled = false\n[engine]\nname = "pipeline"\ndevices = ["cpu"]\n'
        f'[[engine.pipeline.steps]]\nop = "normalise"\n[[engine.pipeline.steps]]\n{step}'
    )
    assert main(["check-config", "--config", str(config)]) == EXIT_CONFIG
    assert named in capsys.readouterr().err


def test_weights_others_may_write_are_refused_for_a_net_step(tmp_path: Path, weights: Path) -> None:
    loose = tmp_path / "loose.safetensors"
    loose.write_bytes(weights.read_bytes())
    loose.chmod(0o666)
    with pytest.raises(
        ConfigError, match=r"engine.pipeline.steps.0.net.weights: engine.pipeline.steps.0.net.weights .* is writable by"
    ):
        build_checked_engines(net_pipeline(s.NetStep(weights=loose)))
    loose.chmod(0o644)
    build_checked_engines(net_pipeline(s.NetStep(weights=loose)))


def test_a_configured_gpu_that_is_missing_stops_a_net_step_too(weights: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    from drdaemon.errors import DeviceLost

    config = net_pipeline(s.NetStep(weights=weights)).model_copy(update={"devices": ["cuda:0"]})
    with pytest.raises(DeviceLost, match="refusing to run on the CPU"):
        build_engines(config)


# -- the daemon and the evaluation ------------------------------------------------------------


@pytest.mark.slow
def test_the_daemon_runs_normalise_net_nlm_with_one_sidecar_recording_every_step(
    tmp_path: Path, frame: np.ndarray
) -> None:
    digest = write_weights(tmp_path / "models" / "enhancer.safetensors", seed=2)
    config = tmp_path / "daemon.toml"
    config.write_text(
        '[folders]\ncreate = true\n[engine]\nname = "pipeline"\ndevices = ["cpu"]\n'
        '[[engine.pipeline.steps]]\nop = "normalise"\n'
        '[[engine.pipeline.steps]]\nop = "net"\nweights = "models/enhancer.safetensors"\nprecision = "float32"\n'
        '[[engine.pipeline.steps]]\nop = "nlm"\n'
        '[watch]\nstability_wait_s = 0.2\nrescan_interval_s = 0.5\n[metrics]\nenabled = false\n[logging]\nformat = "json"\n'
    )
    outbox, output = run_daemon_on(tmp_path, config, [frame], timeout=90)
    sidecar_path = outbox / "f0.tif.json"
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar["engine"]["name"] == "pipeline" and sidecar["engine"]["weights_sha256"] == digest, output
    steps = sidecar["engine"]["parameters"]["steps"]
    assert [step["op"] for step in steps] == ["normalise", "net", "nlm"]
    assert steps[1]["weights_sha256"] == digest and steps[1]["engine"]["precision"] == "float32"
    assert steps[1]["weights"] == str(tmp_path / "models" / "enhancer.safetensors")
    assert {"step1_net", "upload", "compute", "download", "step2_nlm"} <= set(sidecar["timings"])
    assert sidecar["software"]["device"] == "cpu"
    written = tifffile.imread(outbox / "f0.tif")
    assert written.shape == frame.shape and written.dtype == np.uint16
    assert not list((tmp_path / "failed").glob("*"))


def test_the_evaluation_runs_a_configured_pipeline_with_a_net_step(tmp_path: Path, weights: Path) -> None:
    physics.generate(tmp_path / "bench", pairs=2, train=0, size=(96, 128), seed=4, progress=False)
    config = tmp_path / "eval.toml"
    config.write_text(
        f'[engine]\nname = "pipeline"\n[[engine.pipeline.steps]]\nop = "normalise"\n'
        f'[[engine.pipeline.steps]]\nop = "net"\nweights = "{weights}"\n[[engine.pipeline.steps]]\nop = "median"\n'
    )
    out = tmp_path / "out"
    args = ["--data", str(tmp_path / "bench"), "--methods", "identity,pipeline,pipeline:detail", "--out", str(out)]
    code = evaluate_main([*args, "--config", str(config), "--device", "cpu", "--no-progress"])
    assert code == 0
    rows = [line.split("|")[1].strip() for line in (out / "table.md").read_text().splitlines() if line.startswith("| ")]
    assert rows[1:] == ["identity", "pipeline (normalise → net → median)", "pipeline (detail)", "label (reference)"]
    scores = json.loads((out / "scores.json").read_text())
    for frame_scores in scores["frames"].values():
        assert frame_scores["pipeline (normalise → net → median)"]["psnr"] is not None
    assert "pipeline (normalise → net → median)" in (out / "table.csv").read_text()
