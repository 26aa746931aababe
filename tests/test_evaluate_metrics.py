"""Each metric against a hand-computed value or an independent computation on tiny images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.restoration import estimate_sigma

from drdaemon.evaluate import quality as m

# A 3 x 3 image whose differences are easy to do by hand.
TINY = np.array([[0, 10, 20], [0, 10, 40], [30, 30, 30]], dtype=np.uint8)


def test_display_rendition_rounds_x_over_257() -> None:
    frame = np.array([[0, 128, 129, 257, 65535, 65407]], dtype=np.uint16)
    assert m.display_u8(frame).tolist() == [[0, 0, 1, 1, 255, 255]]
    assert m.display_u8(np.array([[7]], np.uint8)).tolist() == [[7]]


def test_average_gradient_by_hand() -> None:
    # Pixels with a right and a lower neighbour: (0,0), (0,1), (1,0), (1,1).
    # dx: 10, 10, 10, 30   dy: 0, 0, 30, 20
    expected = np.mean(
        [
            math.sqrt((10**2 + 0) / 2),
            math.sqrt((10**2 + 0) / 2),
            math.sqrt((10**2 + 30**2) / 2),
            math.sqrt((30**2 + 20**2) / 2),
        ]
    )
    assert m.average_gradient(TINY) == pytest.approx(expected)


def test_spatial_frequency_by_hand() -> None:
    row = [10, 10, 10, 30, 0, 0]  # horizontal differences
    column = [0, 0, 20, 30, 20, -10]  # vertical differences
    expected = math.sqrt(np.mean(np.square(row)) + np.mean(np.square(column)))
    assert m.spatial_frequency(TINY) == pytest.approx(expected)


def test_entropy_and_standard_deviation_by_hand() -> None:
    half = np.array([[0, 0, 255, 255]], dtype=np.uint8)
    assert m.information_entropy(half) == pytest.approx(1.0)
    quarters = np.array([[0, 1, 2, 3]], dtype=np.uint8)
    assert m.information_entropy(quarters) == pytest.approx(2.0)
    assert m.information_entropy(np.full((4, 4), 9, np.uint8)) == 0.0
    assert m.standard_deviation(half) == pytest.approx(127.5)
    uniform = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert m.information_entropy(uniform) == pytest.approx(8.0)  # the 8-bit ceiling of IE


def test_psnr_and_ssim_use_the_dtype_range() -> None:
    reference = np.full((16, 16), 1000, np.uint16)
    test = reference.copy()
    test[0, 0] += 256
    mse = 256**2 / 256  # one pixel off by 256 over 256 pixels
    assert m.psnr(reference, test) == pytest.approx(10 * math.log10(65535**2 / mse))
    reference8 = np.full((16, 16), 100, np.uint8)
    test8 = reference8.copy()
    test8[0, 0] += 32
    assert m.psnr(reference8, test8) == pytest.approx(10 * math.log10(255**2 / (32**2 / 256)))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 65535, (32, 32), dtype=np.uint16)
    assert m.ssim(image, image) == pytest.approx(1.0)
    # The same relative error costs the same SSIM at 8 and at 16 bits when the range follows the dtype.
    noisy8 = np.clip(image // 257 + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
    noisy16 = noisy8.astype(np.uint16) * 257
    clean16 = (image // 257).astype(np.uint16) * 257
    assert m.ssim((image // 257).astype(np.uint8), noisy8) == pytest.approx(m.ssim(clean16, noisy16), abs=1e-3)


def _nrss_by_loops(image: np.ndarray) -> float:
    """NRSS with explicit loops over every block, as the definition reads."""
    import cv2

    f = image.astype(np.float64)
    ref = cv2.GaussianBlur(f, (7, 7), 6, borderType=cv2.BORDER_REFLECT)

    def sobel(x: np.ndarray) -> np.ndarray:
        gx = cv2.Sobel(x, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
        gy = cv2.Sobel(x, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
        return np.hypot(gx, gy)

    g, gr = sobel(f), sobel(ref)
    blocks = []
    for r in range(0, g.shape[0] - 7, 4):
        for c in range(0, g.shape[1] - 7, 4):
            blocks.append((g[r : r + 8, c : c + 8].var(), r, c))
    blocks.sort(key=lambda b: -b[0])
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    total = 0.0
    for _, r, c in blocks[:64]:
        x, y = g[r : r + 8, c : c + 8], gr[r : r + 8, c : c + 8]
        cov = np.mean((x - x.mean()) * (y - y.mean()))
        total += (
            (2 * x.mean() * y.mean() + c1)
            * (2 * cov + c2)
            / ((x.mean() ** 2 + y.mean() ** 2 + c1) * (x.var() + y.var() + c2))
        )
    return 1 - total / min(64, len(blocks))


def test_nrss_matches_a_loop_implementation_and_falls_with_blur() -> None:
    import cv2

    rng = np.random.default_rng(1)
    sharp = np.zeros((64, 80), np.uint8)
    sharp[16:48, 20:60] = 200
    sharp = np.clip(sharp + rng.normal(0, 5, sharp.shape), 0, 255).astype(np.uint8)
    # Distinct block variances, so the 64 chosen blocks do not depend on tie breaking.
    assert m.nrss(sharp) == pytest.approx(_nrss_by_loops(sharp), rel=1e-9)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 2.0)
    assert m.nrss(blurred) < m.nrss(sharp)
    assert m.nrss(np.full((32, 32), 77, np.uint8)) == pytest.approx(0.0)


def test_noise_sigma_agrees_with_scikit_image_and_ignores_flat_regions() -> None:
    rng = np.random.default_rng(2)
    noisy = np.clip(rng.normal(30000, 400, (128, 128)), 0, 65535).astype(np.uint16)
    skimage_sigma = float(estimate_sigma(noisy / 65535.0))  # type: ignore[no-untyped-call]  # scikit-image is unannotated
    assert m.noise_sigma(noisy) == pytest.approx(skimage_sigma, rel=1e-9)
    assert m.noise_sigma(noisy) * 65535 == pytest.approx(400, rel=0.1)
    # Three quarters saturated: the estimate still measures the noisy quarter.
    clipped = np.full((256, 256), 65535, np.uint16)
    clipped[:128, :128] = noisy
    assert m.noise_sigma(clipped) * 65535 == pytest.approx(400, rel=0.15)


def test_noise_gain_is_one_for_the_input_and_two_for_doubled_noise() -> None:
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 300, (128, 128))
    frame = np.clip(20000 + noise, 0, 65535).astype(np.uint16)
    doubled = np.clip(20000 + 2 * noise, 0, 65535).astype(np.uint16)
    sigma = m.noise_sigma(frame)
    assert m.noise_gain(frame, sigma) == pytest.approx(1.0)
    assert m.noise_gain(doubled, sigma) == pytest.approx(2.0, rel=0.02)
    assert math.isnan(m.noise_gain(frame, 0.0))


def test_noise_gain_ignores_clipped_input_that_the_output_turns_into_a_smooth_gray() -> None:
    # Regression: the demo network maps a saturated background to a smooth, noise-free gray
    # just below white; measured on its own non-flat coefficients that background filled the
    # median with near-zero values and the noise gain read 0.03 for an output as noisy as the input.
    rng = np.random.default_rng(5)
    frame = np.full((256, 256), 65535, np.uint16)
    frame[:, :96] = np.clip(rng.normal(20000, 400, (256, 96)), 0, 65535).astype(np.uint16)
    output = frame.astype(np.float64)
    output[:, 96:] = 60000 + 50 * np.linspace(0, 1, 160)[None, :] + 20 * np.linspace(0, 1, 256)[:, None]
    output = output.round().astype(np.uint16)
    sigma, measured = m.noise_sigma(frame), m.measured_coefficients(frame)
    assert m.noise_gain(output, sigma) < 0.2  # the artefact, without the input's mask
    assert m.noise_gain(output, sigma, measured) == pytest.approx(1.0, abs=0.05)
    assert m.score_frame(output, sigma, input_measured=measured).noise_gain == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="noise mask"):
        m.noise_gain(output[:128], sigma, measured)


def test_score_frame_has_reference_metrics_only_with_a_label() -> None:
    rng = np.random.default_rng(4)
    frame = rng.integers(1000, 60000, (48, 48), dtype=np.uint16)
    sigma = m.noise_sigma(frame)
    alone = m.score_frame(frame, sigma)
    assert alone.psnr is None and alone.ssim is None
    assert alone.ie > 0 and alone.noise_gain == pytest.approx(1.0)
    with np.errstate(divide="ignore"):  # identical frames: PSNR is infinite by definition
        paired = m.score_frame(frame, sigma, label=frame)
    assert paired.ssim == pytest.approx(1.0) and paired.psnr is not None and math.isinf(paired.psnr)
    with pytest.raises(ValueError, match="shape"):
        m.score_frame(frame, sigma, label=frame[:10])


def test_lpips_is_skipped_with_a_reason_when_weights_are_not_on_disk() -> None:
    metric, note = m.load_lpips()
    if metric is None:
        assert note.startswith("skipped:")
    else:  # an installation with lpips and its weights: identical frames are at distance ~0
        frame = np.random.default_rng(5).integers(0, 65535, (64, 64), dtype=np.uint16)
        assert metric(frame, frame) == pytest.approx(0.0, abs=1e-4)
