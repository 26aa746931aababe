"""What an inspector needs: figures over the part that brightness and blur cannot game.

The published full-frame PSNR is dominated by the gray level of the air around the part (the
labels put it at 0.85 of full scale, a method that makes it white loses decibels it never
showed an inspector), and a noise gain read on the finest wavelet band alone is driven to
about 0.1 by any blur. These figures answer the inspector's questions instead:

* **PSNR over the part after the affine map.** The output ``y`` (unit rendition ``x /
  65535``) is mapped by the least-squares affine ``a * y + b`` that best fits the label over
  the part's pixels (the generator's material mask), then ``10 log10(1 / MSE)`` over those
  pixels. A global brightness or contrast choice costs nothing; only the shape of the tone
  curve over the part, the detail and the noise do.
* **SSIM over the part**: scikit-image's SSIM map (7 x 7 window, data range 1) of the
  affine-mapped output against the label, averaged over the pixels whose window lies wholly
  inside the part (the part's mask eroded by the window).
* **Noise gain at two scales**: the wavelet-MAD noise sigma (finest diagonal db2 band) of the
  output over that of the input, both measured on the coefficients that lie inside the part
  and where the input is not flat (clipped); at full resolution, and again after 2 x 2
  binning of both frames (a blur that erases the finest band leaves the binned band's noise).
* **Defect visibility** (:func:`defect_contrasts`): for every defect box the generator
  writes, the defect's contrast against the material around it in display levels of the
  8-bit rendition (``x / 257``, unrounded), its contrast-to-noise ratio, and whether it is
  visible: contrast of at least :data:`VISIBLE_LEVELS` display levels *and* CNR of at least
  :data:`VISIBLE_CNR`. Why these thresholds: on an 8-bit display a just-noticeable step at
  mid-gray is 1 to 2 levels (about 0.5 % of the range); 3 levels keeps that visible at the dark
  and bright ends too. A per-pixel CNR of 1 over a defect core of ten or more pixels gives the
  defect as a whole a signal-to-noise ratio of 3 or more, the Rose criterion for detecting an
  object in noise; below CNR 1 the defect drowns in pixel-to-pixel noise however large its
  mean step.

How a defect is measured. The ring is the box grown by ``max(4, half its longer side)``
pixels on each side, less the box grown by 2 pixels, restricted to the part. A plane ``c0 +
c1 x + c2 y`` fitted by least squares to the ring is the material's background (the thickness
trend across the defect). The defect's core is taken from the *label* (nearly noise-free): the
pixels of the box whose label, smoothed by a Gaussian of 1 pixel, departs from the label's ring
plane by at least half of the largest departure, on the side of the largest one. For any frame,
the contrast is the mean over the core of frame minus its own ring plane, signed so that the
label's contrast is positive (a method that inverts a defect scores a negative contrast); the
noise is the standard deviation of the ring's residual about its plane; CNR = contrast / noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from drdaemon.evaluate.quality import ssim_map
from drdaemon.kernels.noise import FLAT_COEFFICIENT, db2_finest_diagonal, sigma_of

#: Display levels (of 256) a defect must differ from its surroundings by to count as visible.
VISIBLE_LEVELS = 3.0
#: Per-pixel contrast-to-noise ratio a defect must reach to count as visible.
VISIBLE_CNR = 1.0
#: Unit rendition -> display levels of the 8-bit rendition (``x / 257`` of the uint16 frame).
DISPLAY_LEVELS = 65535.0 / 257.0
#: scikit-image's SSIM window side.
SSIM_WINDOW = 7
#: Fewest ring pixels a defect needs to be measured.
MIN_RING_PIXELS = 12
#: Smallest contrast (display levels) the label must show a defect with for it to be measured.
MIN_LABEL_LEVELS = 1.0


def unit(frame: np.ndarray) -> np.ndarray:
    """A uint16 (or uint8) frame as float64 in ``[0, 1]``."""
    if frame.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"expected a uint8 or uint16 frame, got {frame.dtype}")
    return frame.astype(np.float64) / float(np.iinfo(frame.dtype).max)


def _check_mask(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if mask.shape != frame.shape:
        raise ValueError(f"part mask shape {mask.shape} differs from frame shape {frame.shape}")
    mask = mask.astype(bool)
    if mask.sum() < 2:
        raise ValueError("the part mask covers fewer than 2 pixels")
    return mask


def affine_to_label(output: np.ndarray, label: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The output's unit rendition after the least-squares affine map to the label over ``mask``.

    output, label: uint16 (or uint8), H x W; mask: bool H x W. Returns float64 H x W.
    """
    mask = _check_mask(output, mask)
    y, t = unit(output), unit(label)
    ys, ts = y[mask], t[mask]
    var = float(ys.var())
    gain = float(((ys - ys.mean()) * (ts - ts.mean())).mean() / var) if var > 0 else 0.0
    offset = float(ts.mean() - gain * ys.mean())
    return gain * y + offset


def part_psnr(output: np.ndarray, label: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB over the part after :func:`affine_to_label` (unit data range)."""
    mapped = affine_to_label(output, label, mask)
    mask = mask.astype(bool)
    mse = float(np.mean((mapped[mask] - unit(label)[mask]) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def part_ssim(output: np.ndarray, label: np.ndarray, mask: np.ndarray) -> float:
    """SSIM (7 x 7 window, data range 1) of the affine-mapped output against the label, averaged over
    the pixels whose window lies inside the part."""
    mapped = affine_to_label(output, label, mask)
    # only windows that lie wholly inside the part: what the method did to the air must not count
    inner = cv2.erode(mask.astype(np.uint8), np.ones((SSIM_WINDOW, SSIM_WINDOW), np.uint8), borderValue=0) > 0
    if not inner.any():
        raise ValueError(f"the part mask holds no {SSIM_WINDOW} x {SSIM_WINDOW} window for SSIM")
    return float(np.mean(ssim_map(unit(label), mapped, 1.0)[inner]))


def bin2(image: np.ndarray) -> np.ndarray:
    """2 x 2 mean binning of a float image (an odd last row or column is dropped)."""
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    v = image[:h, :w]
    return 0.25 * (v[0::2, 0::2] + v[1::2, 0::2] + v[0::2, 1::2] + v[1::2, 1::2])


def _coefficient_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The part mask on the db2 coefficient grid: coefficient k lies over pixels 2k - 2 .. 2k + 1.

    The mask is eroded by 2 pixels first, so a coefficient counts only when its whole support
    lies inside the part.
    """
    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    rows = np.clip(2 * np.arange(shape[0]) - 1, 0, mask.shape[0] - 1)
    cols = np.clip(2 * np.arange(shape[1]) - 1, 0, mask.shape[1] - 1)
    return inner[np.ix_(rows, cols)].astype(bool)


def _gain(output: np.ndarray, reference: np.ndarray, mask: np.ndarray | None) -> float:
    d_in, d_out = db2_finest_diagonal(reference), db2_finest_diagonal(output)
    measured = np.abs(d_in) > FLAT_COEFFICIENT
    if mask is not None:
        measured &= _coefficient_mask(mask, d_in.shape)
    sigma_in = sigma_of(d_in, measured)
    return sigma_of(d_out, measured) / sigma_in if sigma_in > 0 else float("nan")


def noise_gains(output: np.ndarray, input_frame: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """(full resolution, 2 x 2 binned) noise gain of ``output`` over ``input_frame`` inside ``mask``.

    output, input_frame: uint16 (or uint8) H x W; mask: bool H x W or None (the whole frame).
    NaN where the input shows no measurable noise.
    """
    if output.shape != input_frame.shape:
        raise ValueError(f"output shape {output.shape} differs from input shape {input_frame.shape}")
    if mask is not None:
        mask = _check_mask(output, mask)
    y, x = unit(output), unit(input_frame)
    full = _gain(y, x, mask)
    binned_mask = None if mask is None else bin2(mask.astype(np.float64)) > 0.99
    return full, _gain(bin2(y), bin2(x), binned_mask)


@dataclass(frozen=True)
class DefectContrast:
    """One defect as a frame shows it."""

    kind: str
    contrast_levels: float  # display levels, signed: > 0 is the label's polarity
    cnr: float
    visible: bool


def _ring_and_box(box: list[int], shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """The window around a defect, and within it the ring and the box as boolean masks."""
    x0, y0, x1, y1 = (int(v) for v in box)
    grow = max(4, (max(x1 - x0, y1 - y0) + 1) // 2)
    wy0, wx0 = max(0, y0 - grow), max(0, x0 - grow)
    wy1, wx1 = min(shape[0], y1 + grow), min(shape[1], x1 + grow)
    window = (slice(wy0, wy1), slice(wx0, wx1))
    yy, xx = np.mgrid[wy0:wy1, wx0:wx1]
    in_box = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    near_box = (xx >= x0 - 2) & (xx < x1 + 2) & (yy >= y0 - 2) & (yy < y1 + 2)
    return window, ~near_box, in_box


def _plane(values: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares plane through ``values[where]``: (plane over the window, residual at ``where``)."""
    yy, xx = np.mgrid[0 : values.shape[0], 0 : values.shape[1]].astype(np.float64)
    design = np.stack([np.ones(int(where.sum())), xx[where], yy[where]], axis=1)
    coef, *_ = np.linalg.lstsq(design, values[where], rcond=None)
    plane = coef[0] + coef[1] * xx + coef[2] * yy
    return plane, values[where] - plane[where]


def _core(label_window: np.ndarray, ring: np.ndarray, in_box: np.ndarray) -> tuple[np.ndarray, float] | None:
    """The defect's pixels, from the smoothed label, and the label's polarity (+1 or -1)."""
    smooth = cv2.GaussianBlur(label_window, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)
    plane, _ = _plane(smooth, ring)
    departure = np.where(in_box, smooth - plane, 0.0)
    peak = departure.flat[int(np.argmax(np.abs(departure)))]
    if abs(peak) < MIN_LABEL_LEVELS:
        return None
    sign = float(np.sign(peak))
    core = in_box & (sign * departure >= 0.5 * abs(peak))
    return core, sign


def defect_contrasts(
    frame: np.ndarray, label: np.ndarray, boxes: list[dict[str, object]], mask: np.ndarray | None = None
) -> list[DefectContrast]:
    """Contrast, CNR and visibility of every defect box (``{"kind", "box": [x0, y0, x1, y1]}``) in ``frame``.

    frame, label: uint16 (or uint8) H x W; mask: the part (bool H x W) or None. Defects whose
    ring holds fewer than :data:`MIN_RING_PIXELS` part pixels, or that the label shows by less than
    :data:`MIN_LABEL_LEVELS`, are left out (not counted as invisible).
    """
    if frame.shape != label.shape:
        raise ValueError(f"frame shape {frame.shape} differs from label shape {label.shape}")
    y, t = unit(frame) * DISPLAY_LEVELS, unit(label) * DISPLAY_LEVELS
    results = []
    for defect in boxes:
        box = defect["box"]
        if not isinstance(box, list | tuple) or len(box) != 4:
            raise ValueError(f"a defect box is [x0, y0, x1, y1], got {box!r}")
        window, ring, in_box = _ring_and_box([int(v) for v in box], frame.shape)
        if mask is not None:
            ring = ring & mask[window].astype(bool)
        if ring.sum() < MIN_RING_PIXELS or not in_box.any():
            continue
        found = _core(t[window], ring, in_box)
        if found is None:
            continue
        core, sign = found
        plane, residual = _plane(y[window], ring)
        contrast = sign * float(np.mean(y[window][core] - plane[core]))
        noise = float(residual.std())
        cnr = contrast / noise if noise > 0 else (float("inf") if contrast > 0 else 0.0)
        results.append(
            DefectContrast(
                str(defect.get("kind", "")), contrast, cnr, contrast >= VISIBLE_LEVELS and cnr >= VISIBLE_CNR
            )
        )
    return results


@dataclass(frozen=True)
class PartScores:
    """The inspector's figures of one output frame (None where the frame has no label)."""

    psnr_part: float | None
    ssim_part: float | None
    noise_gain_part: float
    noise_gain_2x2: float
    visible_share: float | None
    defect_levels: float | None  # median |contrast| of the measured defects, display levels
    defect_cnr: float | None  # median CNR


def part_scores(
    output: np.ndarray,
    input_frame: np.ndarray,
    label: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    defects: list[dict[str, object]] | None = None,
) -> PartScores:
    """Every figure of this module that applies; without a mask the part is the whole frame."""
    full, binned = noise_gains(output, input_frame, mask)
    if label is None:
        return PartScores(None, None, full, binned, None, None, None)
    part = mask if mask is not None else np.ones(output.shape, bool)
    seen = defect_contrasts(output, label, defects or [], mask)
    share = float(np.mean([d.visible for d in seen])) if seen else None
    levels = float(np.median([d.contrast_levels for d in seen])) if seen else None
    cnr = float(np.median([d.cnr for d in seen])) if seen else None
    return PartScores(part_psnr(output, label, part), part_ssim(output, label, part), full, binned, share, levels, cnr)


#: Side of :func:`step_frame` and the distance from its edge beyond which the output counts as plateau.
STEP_SIZE, STEP_FAR = 1024, 256


def step_frame(low: float = 0.3, high: float = 0.7, size: int = STEP_SIZE) -> np.ndarray:
    """A hand-made step edge (uint16, ``size`` square): ``low`` left of the middle column, ``high`` right.

    Two strips across the top 16 rows at 0.05 and 0.95 of full scale (more than 0.5 % of the
    frame each) set the percentile window, so the step itself is not clipped by it.
    """
    frame = np.full((size, size), low, np.float64)
    frame[:, size // 2 :] = high
    frame[:16, : size // 2], frame[:16, size // 2 :] = 0.05, 0.95
    return np.round(frame * 65535.0).astype(np.uint16)


def halo_overshoot(output: np.ndarray, far: int = STEP_FAR) -> float:
    """Halo of a method at the step of :func:`step_frame`, in percent of the output's own step.

    The profile across the edge is the output's mean over the rows below the window strips. The
    plateaus are its medians farther than ``far`` pixels from the edge; the halo is the overshoot
    above the bright plateau within ``far`` of the edge plus the undershoot below the dark one,
    over the plateaus' difference. 0 for a method that draws no bands; NaN when the output's
    step has vanished or reversed. output: uint16 (or uint8) H x W.
    """
    profile = unit(output)[32:].mean(axis=0)
    edge = profile.size // 2
    dark, bright = float(np.median(profile[: edge - far])), float(np.median(profile[edge + far :]))
    if not bright > dark:
        return float("nan")
    over = max(0.0, float(profile[edge : edge + far].max()) - bright)
    under = max(0.0, dark - float(profile[edge - far : edge].min()))
    return 100.0 * (over + under) / (bright - dark)


__all__ = [
    "DISPLAY_LEVELS",
    "VISIBLE_CNR",
    "VISIBLE_LEVELS",
    "DefectContrast",
    "PartScores",
    "affine_to_label",
    "bin2",
    "defect_contrasts",
    "halo_overshoot",
    "noise_gains",
    "part_psnr",
    "part_scores",
    "part_ssim",
    "step_frame",
    "unit",
]
