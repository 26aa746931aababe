"""Named pipelines: ``engine.pipeline.preset`` (or ``DRDAEMON_ENGINE__PIPELINE__PRESET``).

``detail`` is the default and the fast one (no non-local means): the percentile window, then
the multi-scale contrast step. ``filtered`` is the evaluation's classical filtering
baseline (denoise, CLAHE, 1 to 99 % stretch); the evaluation's ``filtered[:D]`` methods run
these presets through the pipeline engine, so there is one implementation of it.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from drdaemon.pipeline.steps import (
    ClaheStep,
    GaussianStep,
    MedianStep,
    MultiscaleStep,
    NlmStep,
    NormaliseStep,
    Step,
)

PresetName = Literal["detail", "detail-smooth", "filtered", "filtered-median", "filtered-gaussian"]
PRESET_NAMES: Final[tuple[str, ...]] = get_args(PresetName)
DEFAULT_PRESET: Final = "detail"


def _filtered(denoise: Step) -> tuple[Step, ...]:
    """Window, denoise (before CLAHE, which would raise the noise of starved regions), CLAHE, then
    a 1 to 99 % stretch that spends the output range on the part rather than on CLAHE's tails."""
    return (NormaliseStep(), denoise, ClaheStep(), NormaliseStep(low_percentile=1.0, high_percentile=99.0))


PRESETS: Final[dict[str, tuple[Step, ...]]] = {
    "detail": (NormaliseStep(), MultiscaleStep()),
    "detail-smooth": (NormaliseStep(), GaussianStep(sigma=0.8), MultiscaleStep()),
    "filtered": _filtered(NlmStep()),
    "filtered-median": _filtered(MedianStep(size=3)),
    "filtered-gaussian": _filtered(GaussianStep(sigma=1.0)),
}

__all__ = ["DEFAULT_PRESET", "PRESETS", "PRESET_NAMES", "PresetName"]
