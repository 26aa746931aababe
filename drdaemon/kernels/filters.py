"""The pipeline's operations: pure functions on a float32 frame in display units.

Every function takes a 2-D float32 image whose ``[0, 1]`` is the 16-bit range (``x /
65535``) and returns a new float32 image of the same shape; values outside ``[0, 1]`` (after
unsharp masking or the multi-scale step) are kept until a step that needs 16 bits (or gamma),
or the output, clips them. Operations that exist only on integer data (OpenCV's non-local
means, CLAHE, the 65536-level histogram equalisation) round to uint16 for that operation
alone; the tone kernels (:mod:`drdaemon.kernels.tone`) do the 16-bit work, so the pipeline
and the classical engine cannot drift apart. Pure: numpy, OpenCV and SciPy, nothing of the project.

Implementations are chosen for speed on a 13-megapixel frame: OpenCV (multi-threaded,
SIMD) wherever it has the operation on float32, SciPy's ``ndimage`` only where OpenCV does
not (median windows above 5 x 5, which OpenCV takes on 8-bit data only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

from drdaemon.kernels.checks import FLOATS, check_frame
from drdaemon.kernels.noise import wavelet_noise_sigma
from drdaemon.kernels.tone import clahe_u16, equalise_histogram_u16, gamma, to_u16
from drdaemon.kernels.window import U16_MAX, Window, image_to_u16, robust_window, u16_to_image

Morphology = Literal["opening", "closing"]
Footprint = Literal["disk", "square"]

#: Largest median window OpenCV filters on float32 data.
OPENCV_MEDIAN_MAX = 5


def frame_to_image(frame: np.ndarray) -> np.ndarray:
    """A frame of any supported dtype as the pipeline's float32 image (16-bit range to ``[0, 1]``)."""
    return u16_to_image(to_u16(frame))


def percentile_normalise(image: np.ndarray, low_percentile: float, high_percentile: float) -> tuple[np.ndarray, Window]:
    """The robust percentile window (the classical and learned engines' own, measured in the
    input's units: any dtype) mapped to float32 ``[0, 1]``, clipped outside.

    :func:`~drdaemon.kernels.window.to_unit` as one OpenCV affine pass and an in-place clip,
    a third of numpy's time; on a uint16 frame it also spares the conversion to float first.
    """
    window = robust_window(image, low_percentile, high_percentile)
    scale = 1.0 / window.span
    out = cv2.addWeighted(image, scale, image, 0.0, -window.low * scale, dtype=cv2.CV_32F)
    return np.clip(out, 0.0, 1.0, out=out), window


def gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian low-pass (OpenCV; kernel to 4 sigma, mirrored borders)."""
    check_frame("gaussian", image, FLOATS)
    return cv2.GaussianBlur(image, (0, 0), sigma)


def median(image: np.ndarray, size: int) -> np.ndarray:
    """Median over a ``size`` x ``size`` window, replicated borders (OpenCV up to 5, SciPy above)."""
    check_frame("median", image, FLOATS)
    if size <= OPENCV_MEDIAN_MAX:
        return cv2.medianBlur(image, size)
    from scipy import ndimage  # only large windows need SciPy (the `pipeline` extra)

    return ndimage.median_filter(image, size=size, mode="nearest")


def noise_sigma_levels(image: np.ndarray) -> float:
    """The image's wavelet noise sigma in 16-bit levels, measured on its 16-bit rendition as the
    evaluation's noise gain measures it (on ``x / 65535``)."""
    return wavelet_noise_sigma(image_to_u16(image) / U16_MAX) * U16_MAX


def non_local_means(image: np.ndarray, h: float, template_size: int, search_size: int) -> np.ndarray:
    """OpenCV's non-local means on the 16-bit rendition (L1 patch distance, strength ``h`` in levels)."""
    check_frame("non_local_means", image, FLOATS)
    denoised = cv2.fastNlMeansDenoising(
        image_to_u16(image),
        h=[h],
        templateWindowSize=template_size,
        searchWindowSize=search_size,
        normType=cv2.NORM_L1,
    )
    return u16_to_image(denoised)


def equalise(image: np.ndarray) -> np.ndarray:
    """Global histogram equalisation over 65536 levels (the ``he`` engine's function)."""
    return u16_to_image(equalise_histogram_u16(image_to_u16(image)))


def level_histogram(frame: np.ndarray) -> np.ndarray:
    """Counts of each of the 65536 levels of a uint16 frame: int64, shape (65536,)."""
    if frame.dtype != np.uint16:
        raise TypeError(f"level_histogram takes a uint16 frame, got {frame.dtype}")
    return np.bincount(frame.ravel(), minlength=U16_MAX + 1)


def histogram_template(counts: np.ndarray | Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """A reference histogram as (values, quantiles), both float64 of one length, for :func:`match_histogram`.

    ``counts`` are over N equal bins of the 16-bit range, darkest first; a bin's value is the
    mean level it covers in image units (for N = 65536: level / 65535, the levels themselves).
    Only bins that hold pixels take part, as in ``skimage.exposure.match_histograms``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 2 or not counts.sum() > 0:
        raise ValueError("a histogram is a 1-D array of at least 2 non-negative counts that add up to more than 0")
    width = (U16_MAX + 1) / counts.size
    present = np.flatnonzero(counts > 0)
    values = ((present + 0.5) * width - 0.5) / U16_MAX
    quantiles = np.cumsum(counts[present]) / counts.sum()
    return values, quantiles


def match_histogram(image: np.ndarray, values: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Histogram matching of the 16-bit rendition onto a template from :func:`histogram_template`.

    Each level present in the frame goes to the template value at the level's quantile
    (linear interpolation between the template's quantiles): ``skimage.exposure.match_histograms``
    on the uint16 frame, done with a 65536-entry lookup table instead of sorting the frame.
    """
    levels = image_to_u16(image)
    counts = level_histogram(levels)
    present = np.flatnonzero(counts)
    source_quantiles = np.cumsum(counts[present]) / levels.size
    table = np.zeros(U16_MAX + 1, dtype=np.float32)
    table[present] = np.interp(source_quantiles, quantiles, values)
    return table[levels]


def clahe(image: np.ndarray, clip_limit: float, tile_grid: int) -> np.ndarray:
    """CLAHE on the 16-bit rendition (the classical engine's function)."""
    return u16_to_image(clahe_u16(image_to_u16(image), clip_limit, tile_grid))


def unsharp(image: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    """Unsharp masking: ``x + amount * (x - gaussian(x, sigma))``."""
    check_frame("unsharp", image, FLOATS)
    blurred = gaussian(image, sigma)
    return cv2.addWeighted(image, 1.0 + amount, blurred, -amount, 0.0)


def footprint(radius: int, shape: Footprint) -> np.ndarray:
    """The structuring element: a disk (``y^2 + x^2 <= r^2``) or a square of side ``2 r + 1``."""
    if shape == "square":
        return np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (yy * yy + xx * xx <= radius * radius).astype(np.uint8)


def morphology(image: np.ndarray, operation: Morphology, radius: int, shape: Footprint) -> np.ndarray:
    """Gray-level opening (removes bright details smaller than the footprint) or closing (dark ones)."""
    check_frame("morphology", image, FLOATS)
    code = cv2.MORPH_OPEN if operation == "opening" else cv2.MORPH_CLOSE
    return cv2.morphologyEx(image, code, footprint(radius, shape))


def tophat(image: np.ndarray, radius: int, shape: Footprint, bright: float, dark: float) -> np.ndarray:
    """Top-hat contrast: ``x + bright * white_tophat(x) - dark * black_tophat(x)``.

    The white top-hat (``x - opening``) holds the bright details smaller than the footprint,
    the black one (``closing - x``) the dark details (pores, cracks); adding the first and
    subtracting the second raises the contrast of small features over a smooth background.
    """
    check_frame("tophat", image, FLOATS)
    kernel = footprint(radius, shape)
    out = image.copy()
    if bright:
        out = cv2.scaleAdd(cv2.morphologyEx(image, cv2.MORPH_TOPHAT, kernel), bright, out)
    if dark:
        out = cv2.scaleAdd(cv2.morphologyEx(image, cv2.MORPH_BLACKHAT, kernel), -dark, out)
    return out


def gaussian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """``levels + 1`` images, each the previous one blurred and halved (OpenCV's 5 x 5 pyramid kernel)."""
    pyramid = [image]
    for _ in range(levels):
        pyramid.append(cv2.pyrDown(pyramid[-1]))
    return pyramid


def multiscale_contrast(image: np.ndarray, gains: Sequence[float], residual_gain: float) -> np.ndarray:
    """Laplacian-pyramid contrast: band k (finest first) times ``gains[k]``, the coarse residual
    compressed about its mean by ``residual_gain``.

    The bands are ``L_k = G_k - up(G_{k+1})`` of the Gaussian pyramid ``G``; the output is
    ``sum_k gains[k] * up^k(L_k) + up^n(m + residual_gain * (G_n - m))``, ``m`` the residual's
    mean. The finest band holds most of the quantum noise, so a gain of 1 there (the presets'
    choice) leaves the noise level as it was while the coarser bands, the detail a viewer
    reads, are raised; a residual gain below 1 compresses the large-scale thickness trend as
    DR station software does. Reconstruction uses ``up(R) + g L_k = g G_k + up(R - g G_{k+1})``
    (``up`` is linear), so no band image is ever formed at full resolution: the full-size
    work is one ``pyrDown``, one ``pyrUp`` and one scaled add.
    """
    check_frame("multiscale_contrast", image, FLOATS)
    pyramid = gaussian_pyramid(image, len(gains))
    residual = pyramid[-1]
    mean = float(residual.mean())
    out: np.ndarray = cv2.addWeighted(residual, residual_gain, residual, 0.0, mean * (1.0 - residual_gain))
    for level in reversed(range(len(gains))):
        finer = pyramid[level]
        coarser_part = cv2.scaleAdd(pyramid[level + 1], -gains[level], out)
        out = cv2.scaleAdd(finer, gains[level], cv2.pyrUp(coarser_part, dstsize=(finer.shape[1], finer.shape[0])))
    return out


def guided_filter(image: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He, Sun & Tang's guided filter (ECCV 2010; TPAMI 35(6), 2013), the image its own guide.

    In every ``(2 radius + 1)``-square window the output is the linear fit ``a I + b`` with
    ``a = var / (var + eps)``: where the window holds a step much stronger than ``sqrt(eps)``
    (a section's edge) ``a`` is near 1 and the edge is kept; where it holds only fine detail and
    noise, ``a`` is near 0 and the window's mean is returned. Box filters (``cv2.boxFilter``,
    reflected borders) make it O(1) a pixel whatever the radius. image: float32 H x W.
    """
    if image.ndim != 2 or image.dtype != np.float32:
        raise TypeError(f"guided_filter takes a 2-D float32 image, got {image.dtype} {image.shape}")
    size = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, cv2.CV_32F, size, borderType=cv2.BORDER_REFLECT)

    mean = box(image)
    variance = np.maximum(box(image * image) - mean * mean, 0.0)
    a = variance / (variance + np.float32(eps))
    b = mean - a * mean
    out: np.ndarray = box(a) * image + box(b)
    return out


def edge_aware_contrast(
    image: np.ndarray, gains: Sequence[float], residual_gain: float, radius: int, eps: float
) -> np.ndarray:
    """:func:`multiscale_contrast` with an edge-aware base layer: no bands along strong edges.

    The base ``B`` is :func:`guided_filter` of the image; the trend is compressed on it, ``m +
    residual_gain (B - m)`` (``m`` its mean), and the detail layer ``I - B`` gets the band gains
    of :func:`multiscale_contrast` (its own coarse residual kept at gain 1). A strong edge stays
    in ``B``, so neither the compression nor the band gains draw a bright and a dark band along
    it, as the Laplacian pyramid's blurred residual and raised bands do. image: float32 H x W.
    """
    base = guided_filter(image, radius, eps)
    mean = float(base.mean())
    detail = multiscale_contrast(image - base, gains, 1.0)
    out: np.ndarray = cv2.addWeighted(base, residual_gain, detail, 1.0, mean * (1.0 - residual_gain))
    return out


__all__ = [
    "OPENCV_MEDIAN_MAX",
    "clahe",
    "edge_aware_contrast",
    "equalise",
    "footprint",
    "frame_to_image",
    "gamma",
    "gaussian",
    "gaussian_pyramid",
    "guided_filter",
    "histogram_template",
    "image_to_u16",
    "level_histogram",
    "match_histogram",
    "median",
    "morphology",
    "multiscale_contrast",
    "noise_sigma_levels",
    "non_local_means",
    "percentile_normalise",
    "tophat",
    "u16_to_image",
    "unsharp",
]
