"""The inspector's figures (drdaemon.evaluate.inspection): known answers on hand-made frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from drdaemon.evaluate.inspection import (
    DISPLAY_LEVELS,
    defect_contrasts,
    noise_gains,
    part_psnr,
    part_scores,
    part_ssim,
)

SIZE = 128


def u16(unit_image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(unit_image * 65535.0), 0, 65535).astype(np.uint16)


def scene() -> tuple[np.ndarray, np.ndarray]:
    """A label with structure (ramp and discs) over a part that covers the left 3/4 of the frame."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    label = 0.3 + 0.3 * xx + 0.1 * np.sin(12 * yy)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[:, : 3 * SIZE // 4] = True
    return label, mask


def test_affine_map_makes_brightness_and_contrast_free() -> None:
    label, mask = scene()
    output = 0.5 * label + 0.2  # another brightness and contrast, same detail
    output[~mask] = 1.0  # the air around the part turned white: must not count
    assert part_psnr(u16(output), u16(label), mask) > 70  # only 16-bit rounding is left
    assert part_ssim(u16(output), u16(label), mask) > 0.999


def test_part_psnr_reads_the_noise_inside_the_part() -> None:
    label, mask = scene()
    rng = np.random.default_rng(1)
    sigma = 0.01
    output = label + rng.normal(0, sigma, label.shape)
    # PSNR of white noise of sigma 0.01 over a unit range: 40 dB (the affine fit barely helps).
    assert part_psnr(u16(output), u16(label), mask) == pytest.approx(40.0, abs=0.3)
    # noise outside the part does not count
    outside = label.copy()
    outside[~mask] += rng.normal(0, 0.2, int((~mask).sum()))
    assert part_psnr(u16(outside), u16(label), mask) > 70


def test_noise_gains_at_both_scales() -> None:
    rng = np.random.default_rng(2)
    noise = rng.normal(0, 0.005, (SIZE, SIZE))
    frame = 0.5 + noise
    doubled = 0.5 + 2 * noise
    full, binned = noise_gains(u16(doubled), u16(frame))
    assert full == pytest.approx(2.0, rel=0.08)
    assert binned == pytest.approx(2.0, rel=0.08)
    # a blur that erases the finest band: the full-resolution figure falls far more than the binned one
    blurred = cv2.GaussianBlur(frame, (0, 0), 0.8)
    full, binned = noise_gains(u16(blurred), u16(frame))
    assert full < 0.3
    assert binned > full * 1.5


def test_noise_gain_counts_only_the_part() -> None:
    rng = np.random.default_rng(3)
    _, mask = scene()
    frame = 0.5 + rng.normal(0, 0.005, (SIZE, SIZE))
    output = frame.copy()
    output[~mask] = 0.5 + rng.normal(0, 0.05, int((~mask).sum()))  # ten times the noise, outside only
    full, binned = noise_gains(u16(output), u16(frame), mask)
    assert full == pytest.approx(1.0, abs=0.02)
    assert binned == pytest.approx(1.0, abs=0.02)
    whole, _ = noise_gains(u16(output), u16(frame))
    assert whole > 1.2  # the median moves: a quarter of the coefficients are ten times larger


def disc_frame(step_levels: float, noise_levels: float, ramp: bool = True, seed: int = 4) -> np.ndarray:
    """Mid gray (a ramp across the frame if asked) with a disc of radius 6 at (64, 64) raised by ``step_levels``."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    base = 120.0 + (0.2 * xx if ramp else 0.0)
    disc = (xx - 64) ** 2 + (yy - 64) ** 2 <= 36
    levels = base + step_levels * disc + np.random.default_rng(seed).normal(0, noise_levels, (SIZE, SIZE))
    return u16(levels / DISPLAY_LEVELS)


BOX: list[dict[str, object]] = [{"kind": "pore", "box": [57, 57, 72, 72]}]


def test_defect_contrast_and_cnr_known_answer() -> None:
    label = disc_frame(20.0, 0.0)
    shown = disc_frame(6.0, 2.0)
    (defect,) = defect_contrasts(shown, label, BOX)
    assert defect.kind == "pore"
    assert defect.contrast_levels == pytest.approx(6.0, abs=0.6)  # the ramp is removed by the plane
    assert defect.cnr == pytest.approx(3.0, rel=0.15)
    assert defect.visible


def test_faint_noisy_and_inverted_defects_are_not_visible() -> None:
    label = disc_frame(20.0, 0.0)
    (faint,) = defect_contrasts(disc_frame(1.5, 0.3), label, BOX)  # CNR 5, but 1.5 levels
    assert not faint.visible and faint.contrast_levels == pytest.approx(1.5, abs=0.3)
    (noisy,) = defect_contrasts(disc_frame(6.0, 12.0), label, BOX)  # 6 levels, CNR 0.5
    assert not noisy.visible and noisy.cnr < 1.0
    (inverted,) = defect_contrasts(disc_frame(-6.0, 1.0), label, BOX)
    assert inverted.contrast_levels < 0 and not inverted.visible


def test_part_scores_share_of_visible_defects() -> None:
    label = disc_frame(20.0, 0.0)
    boxes: list[dict[str, object]] = [
        *BOX,
        {"kind": "pore", "box": [10, 10, 25, 25]},
    ]  # the second box holds no defect in the label
    scores = part_scores(disc_frame(8.0, 1.0), disc_frame(0.5, 1.0), label, None, boxes)
    assert scores.visible_share == 1.0  # the empty box has no core in the label: left out, not counted
    assert scores.defect_levels == pytest.approx(8.0, abs=0.8)
    blind = part_scores(disc_frame(0.5, 1.0), disc_frame(0.5, 1.0), label, None, BOX)
    assert blind.visible_share == 0.0
    no_label = part_scores(disc_frame(8.0, 1.0), disc_frame(0.5, 1.0))
    assert no_label.psnr_part is None and no_label.visible_share is None


def test_halo_overshoot_on_a_hand_made_step() -> None:
    from drdaemon.evaluate.baselines import build_method
    from drdaemon.evaluate.inspection import halo_overshoot, step_frame

    frame = step_frame()
    assert halo_overshoot(frame) == 0.0  # the step itself draws no band
    banded = frame.astype(np.float64)
    banded[:, 512:540] += 0.1 * 65535  # a bright band 0.1 high along the step of 0.4
    assert halo_overshoot(np.clip(banded, 0, 65535).astype(np.uint16)) == pytest.approx(25.0, abs=0.5)
    # the pyramid's trend compression draws bands; the edge-aware base layer (guided filter) hardly any
    pyramid = halo_overshoot(build_method("pipeline:detail").engine.enhance(frame).pixels)
    guided = halo_overshoot(build_method("pipeline:detail-guided").engine.enhance(frame).pixels)
    assert pyramid > 100 and guided < 15
