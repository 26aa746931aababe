"""The pipeline's ``match`` step: histogram matching to a reference frame or a stored histogram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from drdaemon.config import ConfigError, PipelineConfig
from drdaemon.engines.pipeline import build_pipeline_engine
from drdaemon.pipeline.steps import MatchStep


def test_match_gives_the_hand_computed_answer_on_a_hand_made_pair(tmp_path: Path) -> None:
    # Source: levels 100 (half the pixels) and 200; reference: 1000, 2000, 3000, 4000 once each.
    # Quantiles: source 0.5 and 1.0; reference 0.25, 0.5, 0.75, 1.0 -> 100 maps to 2000, 200 to 4000.
    source = np.array([[100, 100], [200, 200]], np.uint16)
    reference = tmp_path / "reference.tif"
    tifffile.imwrite(reference, np.array([[1000, 2000], [3000, 4000]], np.uint16))
    engine = build_pipeline_engine(PipelineConfig(steps=[MatchStep(reference=reference)]))
    result = engine.enhance(source)
    assert result.pixels.tolist() == [[2000, 2000], [4000, 4000]]
    assert result.parameters["steps"][0]["reference_sha256"]


def test_match_equals_scikit_image_and_a_stored_histogram_gives_the_same_result(tmp_path: Path) -> None:
    exposure = pytest.importorskip("skimage.exposure", reason="scikit-image is the reference (test extra)")
    rng = np.random.default_rng(0)
    source = (rng.integers(0, 65535, (64, 80)) // 7).astype(np.uint16)
    template = rng.gamma(2.0, 5000, (50, 40)).clip(0, 65535).astype(np.uint16)
    reference = tmp_path / "reference.tif"
    tifffile.imwrite(reference, template)
    expected = np.round(exposure.match_histograms(source, template)).astype(np.uint16)
    by_frame = build_pipeline_engine(PipelineConfig(steps=[MatchStep(reference=reference)])).enhance(source).pixels
    counts = np.bincount(template.ravel(), minlength=65536).tolist()
    stored = build_pipeline_engine(PipelineConfig(steps=[MatchStep(histogram=counts)])).enhance(source)
    assert np.abs(by_frame.astype(int) - expected).max() <= 1
    assert np.array_equal(stored.pixels, by_frame)
    assert stored.parameters["steps"][0]["histogram_bins"] == 65536


def test_match_needs_exactly_one_reference_and_a_readable_frame(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        MatchStep()
    with pytest.raises(ValueError, match="exactly one"):
        MatchStep(reference=tmp_path / "a.tif", histogram=[1.0, 2.0])
    with pytest.raises(ConfigError, match=r"match\.reference"):
        build_pipeline_engine(PipelineConfig(steps=[MatchStep(reference=tmp_path / "missing.tif")]))
