"""The public kernels refuse a wrong dtype or shape with a ValueError that names what was passed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from drdaemon.kernels import filters, noise, similarity, tone, window


def test_clahe_refuses_a_float_frame_in_unit_range_instead_of_returning_a_constant_frame() -> None:
    unit = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    with pytest.raises(ValueError, match=r"clahe_u16: expected dtype uint16, got float32.*unit_to_u16"):
        tone.clahe_u16(unit)


def test_clahe_refuses_a_three_dimensional_array_naming_its_shape() -> None:
    rgb = np.zeros((32, 32, 3), np.uint16)
    with pytest.raises(ValueError, match=r"clahe_u16: expected a 2-D frame .* 3-D array of shape \(32, 32, 3\)"):
        tone.clahe_u16(rgb)


@pytest.mark.parametrize(
    ("kernel", "argument"),
    [
        (tone.equalise_histogram_u16, np.zeros((8, 8), np.float32)),
        (lambda a: tone.apply_gamma_u16(a, 0.5), np.zeros((8, 8), np.float64)),
        (lambda a: tone.gamma(a, 0.5), np.zeros((8, 8), np.uint16)),
        (tone.to_u16, np.zeros((8, 8), np.complex64)),
        (window.robust_window, np.zeros((2, 8, 8), np.uint16)),
        (window.u16_to_image, np.zeros((8, 8), np.float32)),
        (window.image_to_u16, np.zeros((8, 8), np.uint16)),
        (noise.wavelet_noise_sigma, np.zeros((8, 8), np.uint16)),
        (lambda a: filters.gaussian(a, 1.0), np.zeros((8, 8), np.uint16)),
        (lambda a: filters.median(a, 3), np.zeros((8, 8, 2), np.float32)),
        (lambda a: filters.unsharp(a, 1.0, 0.5), [[0.0, 1.0]]),
    ],
)
def test_every_checked_kernel_names_itself_and_what_it_got(kernel: Callable[[Any], object], argument: object) -> None:
    with pytest.raises(ValueError, match=r"^\w+: expected"):
        kernel(argument)


def test_the_right_input_still_passes() -> None:
    frame = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    assert tone.clahe_u16(frame).dtype == np.uint16
    assert tone.apply_gamma_u16(frame, 0.5).shape == frame.shape
    assert window.image_to_u16(window.u16_to_image(frame)).tolist() == frame.tolist()


def test_psnr_and_ssim_refuse_frames_whose_range_they_cannot_know_or_that_do_not_match() -> None:
    frame = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 200).astype(np.uint16)
    unit = frame.astype(np.float32) / 65535
    with pytest.raises(ValueError, match=r"psnr: expected dtype uint8 or uint16, got float32.*unit_to_u16"):
        similarity.psnr(frame, unit)
    with pytest.raises(ValueError, match=r"ssim: expected frames of one shape, got \(16, 16\) and \(16, 8\)"):
        similarity.ssim(frame, frame[:, :8])
    with pytest.raises(ValueError, match=r"psnr: expected frames of one dtype, got uint16 and uint8"):
        similarity.psnr(frame, (frame // 257).astype(np.uint8))
    with pytest.raises(ValueError, match=r"ssim: expected a 2-D frame"):
        similarity.ssim(frame[None], frame[None])
    assert similarity.ssim(frame, frame) == pytest.approx(1.0)
