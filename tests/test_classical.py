import numpy as np
import pytest

from drdaemon.engines.classical import ClassicalEngine
from drdaemon.kernels.tone import apply_gamma_u16, clahe_u16, equalise_histogram_u16, to_u16


def casting_like(shape: tuple[int, int] = (256, 320), seed: int = 0) -> np.ndarray:
    """A dim frame: a smooth thickness ramp with faint structure and noise in a narrow raw range."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    ramp = 2000 + 1500 * x / shape[1]
    ribs = 60 * np.sin(y / 7.0) * (x > shape[1] // 2)
    return (ramp + ribs + rng.normal(0, 15, shape)).clip(0, 65535).astype(np.uint16)


def test_clahe_clip_limit_changes_contrast_on_16_bit_frames() -> None:
    frame = ClassicalEngine(method="stretch").enhance(casting_like()).pixels
    outputs = [clahe_u16(frame, clip, 4) for clip in (1.0, 2.0, 4.0)]
    # Local contrast (mean vertical step, across the faint ribs) grows with the clip limit.
    local = [float(np.abs(np.diff(o.astype(np.float64), axis=0)).mean()) for o in outputs]
    assert local[0] < local[1] < local[2]
    assert all(o.dtype == np.uint16 and o.shape == frame.shape for o in outputs)


def test_classical_engine_uses_the_full_16_bit_range_and_records_its_parameters() -> None:
    raw = casting_like()
    result = ClassicalEngine(method="classical", clahe_clip_limit=3.0, clahe_tile_grid=4).enhance(raw)
    assert result.pixels.dtype == np.uint16 and result.pixels.shape == raw.shape
    assert int(result.pixels.max()) - int(result.pixels.min()) > 50_000  # raw span is only ~1,700
    assert result.parameters["clahe_clip_limit"] == 3.0
    assert result.parameters["window"][0] < result.parameters["window"][1]


def test_global_equalisation_flattens_the_histogram() -> None:
    raw = casting_like()
    out = equalise_histogram_u16(raw)
    quartiles = np.percentile(out, [25, 50, 75]) / 65535
    assert quartiles == pytest.approx([0.25, 0.5, 0.75], abs=0.02)


def test_gamma_below_one_brightens_mid_grey_and_keeps_the_ends() -> None:
    frame = np.array([[0, 16384, 65535]], dtype=np.uint16)
    out = apply_gamma_u16(frame, 0.5)
    assert out[0, 0] == 0 and out[0, 2] == 65535
    assert out[0, 1] == round(65535 * (16384 / 65535) ** 0.5)


def test_identity_converts_8_bit_to_16_bit_without_changing_contrast() -> None:
    frame = np.array([[0, 128, 255]], dtype=np.uint8)
    assert to_u16(frame).tolist() == [[0, 128 * 257, 65535]]
