"""The pipeline engine: each step against the library's own call, the multi-scale step against a
hand-computed pyramid, configuration errors, the environment, presets and a daemon run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage

from drdaemon.cli import main
from drdaemon.config import ConfigError, EngineConfig, PipelineConfig, load_settings
from drdaemon.engines import build_checked_engines, build_engines
from drdaemon.engines.pipeline import PipelineEngine
from drdaemon.evaluate.baselines import build_method
from drdaemon.exits import EXIT_CONFIG
from drdaemon.kernels.filters import Footprint, Morphology, footprint
from drdaemon.kernels.window import robust_window
from drdaemon.pipeline import steps as s
from drdaemon.pipeline.presets import PRESET_NAMES, PRESETS

U16 = 65535.0


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    """A small 16-bit DR-like frame: a ramp, a few dense discs and pores, quantum noise."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:72, 0:96].astype(np.float64)
    signal = 8000 + 40000 * xx / 95
    for cy, cx, r, d in [(20, 30, 9, 9000), (50, 70, 12, -7000), (36, 48, 3, 12000)]:
        signal += d * ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
    return np.clip(signal + rng.normal(0, 600, signal.shape), 0, 65535).astype(np.uint16)


def run_step(step: s.Step, frame: np.ndarray) -> np.ndarray:
    """One step as a user configures it: a pipeline of that step alone, 16 bits in and out."""
    out = PipelineEngine((step,)).enhance(frame).pixels
    assert out.dtype == np.uint16 and out.shape == frame.shape
    return out


def as_u16(unit: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(unit * U16), 0, U16).astype(np.uint16)


def levels(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


def inner(a: np.ndarray, margin: int) -> np.ndarray:
    return a[margin:-margin, margin:-margin]


# -- each step against the library -----------------------------------------------------------


def test_normalise_is_the_engines_percentile_window(frame: np.ndarray) -> None:
    out = run_step(s.NormaliseStep(low_percentile=2.0, high_percentile=98.0), frame)
    window = robust_window(frame, 2.0, 98.0)
    expected = as_u16(np.clip((frame - window.low) / window.span, 0, 1))
    assert levels(out, expected) <= 1
    assert out.min() == 0 and out.max() == 65535


def test_gaussian_matches_scipy_ndimage(frame: np.ndarray) -> None:
    out = run_step(s.GaussianStep(sigma=1.5), frame)
    expected = as_u16(ndimage.gaussian_filter(frame / U16, 1.5, mode="mirror", truncate=4.0))
    assert levels(out, expected) <= 1


@pytest.mark.parametrize("size", [3, 7])  # 3: OpenCV, 7: SciPy (OpenCV takes 16-bit medians up to 5)
def test_median_matches_scipy_ndimage(frame: np.ndarray, size: int) -> None:
    out = run_step(s.MedianStep(size=size), frame)
    assert np.array_equal(out, ndimage.median_filter(frame, size=size, mode="nearest"))


def test_nlm_is_opencvs_and_takes_its_strength_from_the_wavelet_noise_estimate(frame: np.ndarray) -> None:
    out = run_step(s.NlmStep(h=900.0, template_size=5, search_size=11), frame)
    expected = cv2.fastNlMeansDenoising(
        frame, h=[900.0], templateWindowSize=5, searchWindowSize=11, normType=cv2.NORM_L1
    )
    assert np.array_equal(out, expected)
    from skimage.restoration import estimate_sigma

    result = PipelineEngine((s.NlmStep(strength=1.5),)).enhance(frame)
    record = result.parameters["steps"][0]
    skimage_sigma = float(estimate_sigma(frame / U16))  # type: ignore[no-untyped-call]  # scikit-image is unannotated
    assert record["noise_sigma"] == pytest.approx(skimage_sigma * U16, rel=1e-3)
    assert record["h_used"] == pytest.approx(1.5 * record["noise_sigma"], rel=1e-3)
    assert 450 < record["noise_sigma"] < 750  # the frame's noise is 600 levels


def test_equalise_matches_scikit_image(frame: np.ndarray) -> None:
    from skimage.exposure import equalize_hist

    out = run_step(s.EqualiseStep(), frame)
    expected = as_u16(equalize_hist(frame, nbins=65536))  # type: ignore[no-untyped-call]  # scikit-image is unannotated
    assert levels(out, expected) <= 0.002 * U16  # the definitions differ by one bin's count
    assert np.corrcoef(out.ravel(), expected.ravel())[0, 1] > 0.9999


def test_clahe_is_opencvs_on_4096_levels(frame: np.ndarray) -> None:
    out = run_step(s.ClaheStep(clip_limit=3.0, tile_grid=4), frame)
    coarse = frame & np.uint16(0xFFF0)  # 4096 levels, so that the clip limit acts (kernels/tone.py)
    expected = cv2.createCLAHE(clipLimit=3.0 * 16, tileGridSize=(4, 4)).apply(coarse)
    assert np.array_equal(out, expected)


def test_unsharp_matches_scikit_image(frame: np.ndarray) -> None:
    from skimage.filters import unsharp_mask

    out = run_step(s.UnsharpStep(sigma=2.0, amount=0.8), frame)
    expected = as_u16(unsharp_mask(frame / U16, radius=2.0, amount=0.8, preserve_range=True))  # type: ignore[no-untyped-call]  # scikit-image is unannotated
    assert levels(inner(out, 9), inner(expected, 9)) <= 1  # the borders are mirrored, not replicated
    assert out.std() > frame.std()


def test_gamma_matches_scikit_image(frame: np.ndarray) -> None:
    from skimage.exposure import adjust_gamma

    out = run_step(s.GammaStep(gamma=0.6), frame)
    expected = adjust_gamma(frame / U16, 0.6)  # type: ignore[no-untyped-call]  # scikit-image is unannotated
    assert levels(out, as_u16(expected)) <= 1


def test_the_disk_footprint_is_scikit_images() -> None:
    from skimage.morphology import disk

    for radius in (1, 3, 6):
        assert np.array_equal(footprint(radius, "disk"), disk(radius))  # type: ignore[no-untyped-call]  # scikit-image is unannotated
    assert footprint(2, "square").shape == (5, 5) and footprint(2, "square").all()


@pytest.mark.parametrize("operation", ["opening", "closing"])
@pytest.mark.parametrize("shape", ["disk", "square"])
def test_morphology_matches_scipy_ndimage(frame: np.ndarray, operation: Morphology, shape: Footprint) -> None:
    out = run_step(s.MorphologyStep(operation=operation, radius=3, shape=shape), frame)
    morph = ndimage.grey_opening if operation == "opening" else ndimage.grey_closing
    expected = morph(frame, footprint=footprint(3, shape).astype(bool))
    assert np.array_equal(inner(out, 7), inner(expected, 7))  # the border rules differ


def test_tophat_adds_the_white_and_subtracts_the_black_top_hat(frame: np.ndarray) -> None:
    out = run_step(s.TophatStep(radius=4, bright=0.7, dark=1.2), frame)
    disk = footprint(4, "disk").astype(bool)
    unit = frame / U16
    expected = (
        unit + 0.7 * ndimage.white_tophat(unit, footprint=disk) - 1.2 * ndimage.black_tophat(unit, footprint=disk)
    )
    assert levels(inner(out, 9), inner(as_u16(expected), 9)) <= 1


# -- the multi-scale step ----------------------------------------------------------------------


def hand_made_multiscale(unit: np.ndarray, gains: list[float], residual_gain: float) -> np.ndarray:
    """The Laplacian pyramid the slow way: each band formed, scaled, and everything expanded back."""
    g: list[np.ndarray] = [unit.astype(np.float32)]
    for _ in gains:
        g.append(cv2.pyrDown(g[-1]))

    def up(image: np.ndarray, like: np.ndarray) -> np.ndarray:
        return cv2.pyrUp(image, dstsize=(like.shape[1], like.shape[0]))

    bands = [g[k] - up(g[k + 1], g[k]) for k in range(len(gains))]
    mean = g[-1].mean()
    out = mean + residual_gain * (g[-1] - mean)
    for k in reversed(range(len(gains))):
        out = up(out, g[k]) + gains[k] * bands[k]
    return out


def test_multiscale_matches_a_hand_computed_laplacian_pyramid(frame: np.ndarray) -> None:
    gains, residual = [1.0, 2.0, 1.5], 0.5
    out = run_step(s.MultiscaleStep(gains=gains, residual_gain=residual), frame)
    assert levels(out, as_u16(hand_made_multiscale(frame / U16, gains, residual))) <= 1
    # unit gains rebuild the frame; the finest band's gain of 1 leaves the noise where it was
    assert levels(run_step(s.MultiscaleStep(gains=[1.0, 1.0, 1.0], residual_gain=1.0), frame), frame) <= 1
    finest = frame / U16 - cv2.pyrUp(cv2.pyrDown((frame / U16).astype(np.float32)), dstsize=frame.shape[::-1])
    finest_out = out / U16 - cv2.pyrUp(cv2.pyrDown((out / U16).astype(np.float32)), dstsize=frame.shape[::-1])
    assert inner(finest_out, 4).std() < 1.35 * inner(finest, 4).std()  # the raised coarse bands leak a little


def test_multiscale_on_odd_sizes_and_tiny_frames() -> None:
    rng = np.random.default_rng(0)
    for shape in [(37, 53), (5, 3), (1, 1)]:
        frame = rng.integers(1000, 60000, shape).astype(np.uint16)
        out = run_step(s.MultiscaleStep(gains=[1.0, 1.5, 1.5, 1.2]), frame)
        assert levels(out, as_u16(hand_made_multiscale(frame / U16, [1.0, 1.5, 1.5, 1.2], 1.0))) <= 1


# -- configuration -----------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("steps", "named"),
    [
        (
            '[[engine.pipeline.steps]]\nop = "normalise"\n[[engine.pipeline.steps]]\nop = "median"\nsize = 4\n',
            "engine.pipeline.steps.1.median.size: Value error, must be odd",
        ),
        ('[[engine.pipeline.steps]]\nop = "sharpen"\n', "engine.pipeline.steps.0: Input tag 'sharpen'"),
        (
            '[[engine.pipeline.steps]]\nop = "gaussian"\nsigmaa = 1.0\n',
            "engine.pipeline.steps.0.gaussian.sigmaa: unknown key",
        ),
        ('[[engine.pipeline.steps]]\nop = "multiscale"\ngains = []\n', "engine.pipeline.steps.0.multiscale.gains"),
        (
            '[[engine.pipeline.steps]]\nop = "nlm"\ntemplate_size = 9\nsearch_size = 7\n',
            "engine.pipeline.steps.0.nlm: Value error, search_size (7) must exceed template_size (9)",
        ),
        ('[engine.pipeline]\npreset = "sharp"\n', "engine.pipeline.preset"),
    ],
)
def test_a_bad_step_exits_78_naming_the_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], steps: str, named: str
) -> None:
    config = write(tmp_path / "d.toml", f'[engine]\nname = "pipeline"\n{steps}')
    assert main(["check-config", "--config", str(config)]) == EXIT_CONFIG
    assert named in capsys.readouterr().err


def test_a_bad_step_stops_the_daemon_with_78_before_it_touches_a_folder(tmp_path: Path) -> None:
    import subprocess

    config = write(
        tmp_path / "d.toml",
        '[folders]\ninbox = "in"\n[engine]\nname = "pipeline"\n[[engine.pipeline.steps]]\nop = "gamma"\ngamma = 0\n',
    )
    done = subprocess.run(
        [sys.executable, "-m", "drdaemon", "run", "--config", str(config)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == EXIT_CONFIG
    assert "engine.pipeline.steps.0.gamma.gamma: Input should be greater than 0" in done.stderr
    assert not (tmp_path / "in").exists()


def test_steps_and_preset_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "d.toml", '[engine]\nname = "pipeline"\n[[engine.pipeline.steps]]\nop = "gaussian"\n')
    monkeypatch.setenv(
        "DRDAEMON_ENGINE__PIPELINE__STEPS", '[{"op": "median", "size": 5}, {"op": "gamma", "gamma": 0.7}]'
    )
    assert load_settings(config).engine.pipeline.resolved_steps() == (s.MedianStep(size=5), s.GammaStep(gamma=0.7))
    monkeypatch.setenv("DRDAEMON_ENGINE__PIPELINE__STEPS", "[]")
    monkeypatch.setenv("DRDAEMON_ENGINE__PIPELINE__PRESET", "filtered")
    pipeline = load_settings(config).engine.pipeline
    assert pipeline.preset_name() == "filtered" and pipeline.resolved_steps() == PRESETS["filtered"]
    monkeypatch.delenv("DRDAEMON_ENGINE__PIPELINE__STEPS")  # the file's steps and a preset: which one?
    with pytest.raises(ConfigError, match=r"set either preset .* or steps, not both"):
        load_settings(config)
    monkeypatch.delenv("DRDAEMON_ENGINE__PIPELINE__PRESET")
    monkeypatch.setenv("DRDAEMON_ENGINE__PIPELINE__STEPS", "[{op: median}]")
    assert main(["check-config", "--config", str(config)]) == EXIT_CONFIG
    assert "DRDAEMON_ENGINE__PIPELINE__STEPS='[{" in capsys.readouterr().err


def test_check_config_prints_the_steps_as_toml_that_loads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(
        tmp_path / "d.toml",
        '[folders]\ncreate = true\n[metrics]\nport = 0\n[engine]\nname = "pipeline"\n[[engine.pipeline.steps]]\nop = "nlm"\n'
        '[[engine.pipeline.steps]]\nop = "multiscale"\ngains = [1.0, 2.0]\n',
    )
    assert main(["check-config", "--config", str(config)]) == 0
    printed = write(tmp_path / "effective.toml", capsys.readouterr().out)
    assert "[[engine.pipeline.steps]]" in printed.read_text()
    assert load_settings(printed).engine.pipeline == load_settings(config).engine.pipeline


def test_a_large_median_without_scipy_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    config = EngineConfig(name="pipeline", pipeline=PipelineConfig(steps=[s.MedianStep(size=3), s.MedianStep(size=9)]))
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.ndimage", None)
    with pytest.raises(ConfigError, match=r"engine.pipeline.steps.1.median.size: a 9 x 9 median needs SciPy"):
        build_checked_engines(config)
    build_checked_engines(EngineConfig(name="pipeline", pipeline=PipelineConfig(steps=[s.MedianStep(size=5)])))


# -- presets, the evaluation, the sidecar ------------------------------------------------------


def test_every_preset_runs_and_the_default_is_detail(frame: np.ndarray) -> None:
    default = build_engines(EngineConfig(name="pipeline"))[0]
    assert isinstance(default, PipelineEngine) and default.preset == "detail"
    for name in PRESET_NAMES:
        engine = build_engines(EngineConfig(name="pipeline", pipeline=PipelineConfig(preset=name)))[0]
        result = engine.enhance(frame)
        assert result.pixels.dtype == np.uint16 and result.pixels.shape == frame.shape
        assert result.parameters["preset"] == name
        assert [step["op"] for step in result.parameters["steps"]] == [step.op for step in PRESETS[name]]
        assert set(result.timings) == {f"step{i}_{step.op}" for i, step in enumerate(PRESETS[name])} | {
            "pipeline_output"
        }


@pytest.mark.parametrize(
    ("method", "preset"),
    [
        ("filtered", "filtered"),
        ("filtered:median", "filtered-median"),
        ("filtered:gaussian", "filtered-gaussian"),
        ("pipeline", "detail"),
    ],
)
def test_the_evaluations_filtered_method_is_the_pipeline_preset(frame: np.ndarray, method: str, preset: str) -> None:
    engine = build_method(method).engine
    assert isinstance(engine, PipelineEngine) and engine.steps == PRESETS[preset]
    preset_engine = build_engines(EngineConfig(name="pipeline", pipeline=PipelineConfig(preset=preset)))[0]
    assert np.array_equal(engine.enhance(frame).pixels, preset_engine.enhance(frame).pixels)


def test_the_filtered_preset_denoises_before_equalising(frame: np.ndarray) -> None:
    from drdaemon.engines import ClassicalEngine
    from drdaemon.evaluate.quality import noise_sigma

    clahe = ClassicalEngine(method="classical").enhance(frame).pixels
    for name in ("filtered", "filtered-median", "filtered-gaussian"):
        out = build_method(f"pipeline:{name}").engine.enhance(frame).pixels
        assert noise_sigma(out) < 0.8 * noise_sigma(clahe), name


@pytest.mark.slow
def test_the_daemon_runs_a_frame_through_the_pipeline_and_the_sidecar_records_the_steps(tmp_path: Path) -> None:
    from tests.testkit import Station, frame_bytes

    station = Station(
        tmp_path,
        extra='[engine]\nname = "pipeline"\n[[engine.pipeline.steps]]\nop = "normalise"\nlow_percentile = 1.0\n'
        '[[engine.pipeline.steps]]\nop = "median"\n[[engine.pipeline.steps]]\nop = "multiscale"\ngains = [1.0, 1.5]\n',
    )
    source = frame_bytes(5, (60, 80))
    station.start()
    try:
        station.drop("plate.tif", source)
        station.wait_for(lambda: "plate.tif.json" in station.names("outbox"))
        assert station.stop() == 0
    finally:
        if station.process is not None:
            station.kill()
    station.assert_exactly_once({"plate.tif": source})
    record = station.sidecars()[0]
    assert record.engine.name == "pipeline" and record.engine.weights_sha256 is None
    parameters = record.engine.parameters
    assert parameters["method"] == "pipeline" and parameters["preset"] is None
    assert [step["op"] for step in parameters["steps"]] == ["normalise", "median", "multiscale"]
    assert parameters["steps"][0]["low_percentile"] == 1.0 and len(parameters["steps"][0]["window"]) == 2
    assert parameters["steps"][2] == {
        "op": "multiscale",
        "gains": [1.0, 1.5],
        "residual_gain": 1.0,
        "base": "pyramid",
        "base_radius": 32,
        "base_eps": 0.001,
    }
    assert {"step0_normalise", "step1_median", "step2_multiscale"} <= set(record.timings)
    assert record.timings["window"] == 0.0  # the reader measured no window: the normalise step did
    raw = json.loads((station.dirs["outbox"] / "plate.tif.json").read_text())
    assert raw["engine"]["parameters"]["steps"][1] == {"op": "median", "size": 3}


def test_the_configuration_hash_follows_the_steps_that_run_and_ignores_the_table_elsewhere() -> None:
    detail = EngineConfig(name="pipeline").configuration_sha256()
    assert (
        detail
        == EngineConfig(name="pipeline", pipeline=PipelineConfig(steps=list(PRESETS["detail"]))).configuration_sha256()
    )
    assert detail != EngineConfig(name="pipeline", pipeline=PipelineConfig(preset="filtered")).configuration_sha256()
    # for another engine the pipeline table shapes nothing, so it changes no DICOM series
    assert (
        EngineConfig(name="he").configuration_sha256()
        == EngineConfig(name="he", pipeline=PipelineConfig(preset="filtered")).configuration_sha256()
    )
