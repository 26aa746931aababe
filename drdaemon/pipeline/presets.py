"""Named pipelines: ``engine.pipeline.preset`` (or ``DRDAEMON_ENGINE__PIPELINE__PRESET``).

``detail`` is the default and a fast one (no non-local means): the percentile window, gamma
0.5 (lifts the starved thick sections), then the multi-scale contrast step with the coarse
residual halved about its mean (the thickness trend compressed, the detail bands raised, the
finest band and its noise left as they were). Its gamma and residual gain were chosen on 8
synthetic pairs of another seed than the benchmark's (seed 1, 1024 x 1024), among 8
candidates, by PSNR and SSIM against the labels. ``detail-smooth`` adds a light Gaussian
before the pyramid. ``filtered`` is the evaluation's classical filtering
baseline (denoise, CLAHE, 1 to 99 % stretch); the evaluation's ``filtered[:D]`` methods run
these presets through the pipeline engine, so there is one implementation of it.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from drdaemon.pipeline.steps import (
    ClaheStep,
    GammaStep,
    GaussianStep,
    MedianStep,
    MultiscaleStep,
    NlmStep,
    NormaliseStep,
    Step,
)

PresetName = Literal["detail", "detail-guided", "detail-smooth", "filtered", "filtered-median", "filtered-gaussian"]
PRESET_NAMES: Final[tuple[str, ...]] = get_args(PresetName)
DEFAULT_PRESET: Final = "detail"


def _filtered(denoise: Step) -> tuple[Step, ...]:
    """Window, denoise (before CLAHE, which would raise the noise of starved regions), CLAHE, then
    a 1 to 99 % stretch that spends the output range on the part rather than on CLAHE's tails."""
    return (NormaliseStep(), denoise, ClaheStep(), NormaliseStep(low_percentile=1.0, high_percentile=99.0))


PRESETS: Final[dict[str, tuple[Step, ...]]] = {
    "detail": (NormaliseStep(), GammaStep(gamma=0.5), MultiscaleStep(residual_gain=0.5)),
    "detail-guided": (NormaliseStep(), GammaStep(gamma=0.5), MultiscaleStep(residual_gain=0.5, base="guided")),
    "detail-smooth": (
        NormaliseStep(),
        GammaStep(gamma=0.5),
        GaussianStep(sigma=0.8),
        MultiscaleStep(residual_gain=0.5),
    ),
    "filtered": _filtered(NlmStep()),
    "filtered-median": _filtered(MedianStep(size=3)),
    "filtered-gaussian": _filtered(GaussianStep(sigma=1.0)),
}

__all__ = ["DEFAULT_PRESET", "PRESETS", "PRESET_NAMES", "PresetName"]
