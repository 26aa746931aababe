"""Before/after preview images: input | CLAHE prior | enhancer output, one row per frame."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor


def preview_grid(inputs: Tensor, clahe: Tensor, outputs: Tensor) -> np.ndarray:
    """An 8-bit (rows*S, 3*S) image from three (K, 1, S, S) tensors in [0, 1]."""
    rows = torch.cat([inputs, clahe, outputs], dim=3)[:, 0]  # (K, S, 3S)
    grid = rows.reshape(-1, rows.shape[-1]).float().clamp(0, 1).cpu().numpy()
    return (grid * 255 + 0.5).astype(np.uint8)


def write_preview(folder: Path, iteration: int, grid: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"iter_{iteration:07d}.png"
    cv2.imwrite(str(path), grid)
    return path
