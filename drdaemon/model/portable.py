"""The enhancer as one graph without shape-dependent Python: what ``export-onnx`` traces.

The eager network (:mod:`drdaemon.model.network`) plans its memory with Python on the
frame's shape: the residual blocks' row bands and the pyramid pooling's region sums cut the
map at boundaries computed in Python, and ``adaptive_avg_pool2d`` shrinks the frame for
``illumination_scale`` > 1. A traced graph would freeze those for the traced size. Here the
same arithmetic is written with tensor operations on the shape, so one exported graph runs
any frame size (dynamic height and width):

* residual blocks in their plain out-of-place form (the runtime plans its own memory);
* the pyramid pooling's adaptive averages as two small matrix products: a
  ``(sum(bins), H)`` matrix of row weights and a ``(sum(bins), W)`` one of column weights,
  built from ``arange`` and the bin bounds ``floor(i*n/b)`` to ``ceil((i+1)*n/b)`` that
  adaptive average pooling uses;
* the shrink for ``illumination_scale`` s > 1 as adaptive average pooling to
  ``ceil(H/s) x ceil(W/s)``, summed from s + 1 gathered rows (then columns) per output cell,
  since no region is longer than s + 1.

The weights are the eager model's own modules (shared, not copied); three-channel weights
see the gray frame as three equal channels, so the first convolution's weights are summed
over their input channels once, as the eager engine's ``fold_gray_input`` does.
Input: ``(N, 1, H, W)`` float32 in [0, 1] (the frame through its percentile window);
output: the enhanced frame, same shape, float32 in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drdaemon.model.network import (
    LEAKY_SLOPE,
    Enhancer,
    PyramidPooling,
    ResidualBlock,
    apply_illumination,
)


def bin_weights(length: int, bins: tuple[int, ...]) -> Tensor:
    """``(sum(bins), length)`` float32 weights: row ``k`` averages the region of one bin cell.

    ``length`` is a dimension of the traced map (a symbolic size when exporting); bin ``i``
    of ``b`` covers ``floor(i*n/b)`` to ``ceil((i+1)*n/b)``, as ``adaptive_avg_pool2d``.
    """
    starts = torch.cat([torch.arange(b, dtype=torch.int64) * length // b for b in bins])
    ends = torch.cat([-((-(torch.arange(b, dtype=torch.int64) + 1) * length) // b) for b in bins])
    index = torch.arange(length, dtype=torch.int64)[None, :]
    inside = (index >= starts[:, None]) & (index < ends[:, None])
    return inside.to(torch.float32) / (ends - starts).to(torch.float32)[:, None]


def pyramid_averages(x: Tensor, bins: tuple[int, ...]) -> list[Tensor]:
    """Adaptive averages of ``x`` (N, C, H, W) over each ``b x b`` grid, as matrix products."""
    rows = bin_weights(x.shape[-2], bins)  # (K, H)
    cols = bin_weights(x.shape[-1], bins)  # (K, W)
    grid = torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))  # (N, C, K, K)
    pooled, first = [], 0
    for b in bins:
        pooled.append(grid[..., first : first + b, first : first + b])
        first += b
    return pooled


def area_shrink_axis(x: Tensor, dim: int, scale: int) -> Tensor:
    """Adaptive average pooling of ``x`` along ``dim`` to ``ceil(n/scale)`` cells."""
    length = x.shape[dim]
    cells = (length + scale - 1) // scale
    index = torch.arange(cells, dtype=torch.int64)
    starts = index * length // cells
    ends = -((-(index + 1) * length) // cells)
    shape = [1] * x.dim()
    shape[dim] = -1
    total = torch.zeros_like(x.index_select(dim, starts))
    for k in range(scale + 1):
        rows = torch.clamp(starts + k, max=length - 1)
        used = ((starts + k) < ends).to(x.dtype).reshape(shape)
        total = total + x.index_select(dim, rows) * used
    return total / (ends - starts).to(x.dtype).reshape(shape)


def plain_residual(block: ResidualBlock, x: Tensor) -> Tensor:
    return F.leaky_relu(x + block.conv2(F.leaky_relu(block.conv1(x), LEAKY_SLOPE)), LEAKY_SLOPE)


def run_layers(layers: nn.Sequential, x: Tensor) -> Tensor:
    for layer in layers:
        x = plain_residual(layer, x) if isinstance(layer, ResidualBlock) else layer(x)
    return x


def pyramid_context(context: PyramidPooling, x: Tensor) -> Tensor:
    size = x.shape[-2:]
    contexts = [
        F.interpolate(branch(p), size=size, mode="bilinear", align_corners=True)
        for branch, p in zip(context.branches, pyramid_averages(x, context.bins), strict=True)
    ]
    return context.fuse_conv(torch.cat([x, *contexts], dim=1))


class PortableEnhancer(nn.Module):
    """The whole-frame enhancer on a gray frame, traceable with dynamic height and width."""

    def __init__(self, model: Enhancer) -> None:
        super().__init__()
        self.model = model
        self.scale = model.spec.illumination_scale
        first = model.stem[0]
        if not isinstance(first, nn.Conv2d):
            raise TypeError("the enhancer's stem does not start with a convolution")
        self.first_weight = nn.Parameter(first.weight.detach().sum(dim=1, keepdim=True), requires_grad=False)

    def illumination(self, x: Tensor) -> Tensor:
        model = self.model
        first = model.stem[0]
        assert isinstance(first, nn.Conv2d)
        features = F.conv2d(x, self.first_weight, first.bias, padding=1)
        features = run_layers(model.stem[1:], features)
        features = pyramid_context(model.context, features)
        features = run_layers(model.body, features)
        return torch.relu(model.head.conv(features))

    def forward(self, gray: Tensor) -> Tensor:
        if self.scale == 1:
            return apply_illumination(gray, self.illumination(gray))
        small = area_shrink_axis(area_shrink_axis(gray, 2, self.scale), 3, self.scale)
        light = F.interpolate(self.illumination(small), size=gray.shape[-2:], mode="bilinear", align_corners=False)
        return apply_illumination(gray, light)


__all__ = ["PortableEnhancer", "area_shrink_axis", "bin_weights", "pyramid_averages"]
