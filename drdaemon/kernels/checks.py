"""The kernels' input checks: a clear ValueError naming what was passed, before OpenCV or numpy fail obscurely."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

FLOATS = (np.float32, np.float64)


def check_frame(kernel: str, frame: object, dtypes: Iterable[type], hint: str = "") -> np.ndarray:
    """``frame`` as a 2-D (height, width) numpy array of one of ``dtypes``; ValueError otherwise.

    ``kernel`` names the function in the message; ``hint`` says how to get the right input.
    """
    allowed = tuple(np.dtype(d) for d in dtypes)
    names = " or ".join(str(d) for d in allowed)
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"{kernel}: expected a 2-D numpy array of {names}, got {type(frame).__name__}")
    if frame.ndim != 2:
        raise ValueError(
            f"{kernel}: expected a 2-D frame (height, width) of {names}, got a {frame.ndim}-D array of shape "
            f"{frame.shape}{'; ' + hint if hint else ''}"
        )
    if frame.dtype not in allowed:
        raise ValueError(f"{kernel}: expected dtype {names}, got {frame.dtype}{'; ' + hint if hint else ''}")
    return frame
