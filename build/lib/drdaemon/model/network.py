"""The enhancer: a small fully convolutional Retinex-style network.

It predicts a one-channel illumination map ``L`` and returns ``clamp(I / (L + eps), 0, 1)``.
The frame is never downsampled inside the network (unless ``illumination_scale > 1`` asks
for it explicitly), so it runs on a whole DR frame in one pass; the only global operation is
the pyramid pooling context block, whose pooled averages the exact tiler in
:mod:`drdaemon.model.tiling` reproduces tile by tile.

Four named parts, in order: ``stem`` (features at full resolution), ``context`` (pyramid
pooling), ``body`` (the residual trunk) and ``head`` (the 32 -> 1 convolution that gives L).

Precision. Under float16/bfloat16 autocast the head, the upsampling of L and the division
run in float32: near L = 1 one float16 step of L is 2^-10 (64 of 65535 output levels), a
bfloat16 step eight times coarser, which shows as contour steps under an inspector's narrow
window. The trunk stays in the fast half precision; its rounding still shows where L is
close to 0 (a high gain on nearly black input), where any error of L is multiplied.

Memory. Without autograd (inference, or the trainer's no-grad passes) the residual blocks
add in place and compute their second convolution in bands of rows, and the trunk runs
layer by layer, so at most two 64-channel maps and one band are alive at once instead of
three maps. With autograd the plain out-of-place form runs, which autograd needs.

Bias choices (not spelled out by the published description) follow the reference code of
this architecture family: the residual blocks' convolutions and the pyramid pooling's
convolutions carry no bias. With ``in_ch = 3`` the network then has exactly 278,790
parameters, the published 0.279 M.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drdaemon.model.pooling import region_average_pool

#: Added to the illumination map before the division, so a dark map cannot divide by zero.
ILLUMINATION_EPS = 1e-4
#: The pyramid pooling bins, in output grid cells per side.
PYRAMID_BINS = (1, 2, 3, 6)
ALLOWED_SCALES = (1, 2, 4, 8)
#: Slope of the leaky ReLUs.
LEAKY_SLOPE = 0.2
#: Bands of rows a residual block's second convolution runs in without autograd (and the
#: fewest rows a band has): one band's output is the only third map alive.
RESIDUAL_BANDS = 16
MIN_BAND_ROWS = 64


@dataclass(frozen=True)
class EnhancerSpec:
    """What is needed to rebuild an enhancer; stored in the weights file's metadata."""

    in_ch: int = 1
    illumination_scale: int = 1
    architecture: str = "retinex-ppm-v1"
    #: Channels of the stem, context and outer trunk, and of the trunk's wide middle.
    width: int = 32
    wide_width: int = 64

    def __post_init__(self) -> None:
        if self.in_ch not in (1, 3):
            raise ValueError(f"in_ch must be 1 or 3, got {self.in_ch}")
        if self.illumination_scale not in ALLOWED_SCALES:
            raise ValueError(f"illumination_scale must be one of {ALLOWED_SCALES}")

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def conv3x3(in_ch: int, out_ch: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=bias)


def row_bands(height: int, bands: int = RESIDUAL_BANDS, min_rows: int = MIN_BAND_ROWS) -> list[tuple[int, int]]:
    """``[start, stop)`` rows cutting ``height`` into at most ``bands`` parts of at least ``min_rows``."""
    count = max(1, min(bands, height // min_rows))
    cuts = [height * i // count for i in range(count + 1)]
    return list(itertools.pairwise(cuts))


class ResidualBlock(nn.Module):
    """conv - LeakyReLU - conv, plus the input, then LeakyReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels, bias=False)
        self.conv2 = conv3x3(channels, channels, bias=False)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return self.act(x + self.conv2(self.act(self.conv1(x))))
        return self.forward_in_place(x)

    def forward_in_place(self, x: Tensor) -> Tensor:
        """The same sum without autograd, written into ``x``: two maps and one band alive.

        Each band of ``conv2``'s output reads one row more of ``conv1``'s map on each side,
        clipped at the frame's edge, so the zero padding is where the whole map has it.
        """
        inner = F.leaky_relu(self.conv1(x), LEAKY_SLOPE, inplace=True)
        height = x.shape[-2]
        for start, stop in row_bands(height):
            top, bottom = max(start - 1, 0), min(stop + 1, height)
            band = self.conv2(inner[..., top:bottom, :])
            x[..., start:stop, :] += band[..., start - top : band.shape[-2] - (bottom - stop), :]
        del inner
        return F.leaky_relu(x, LEAKY_SLOPE, inplace=True)


class PyramidPooling(nn.Module):
    """Global context: averages over 1x1, 2x2, 3x3 and 6x6 grids, fused with the input map.

    Split into :meth:`pool` (the only step that sees the whole frame) and :meth:`fuse`
    (local once the pooled grids are known) so the exact tiler can run them apart.
    """

    def __init__(self, channels: int = 32, reduced: int = 8, bins: tuple[int, ...] = PYRAMID_BINS):
        super().__init__()
        self.bins = bins
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, reduced, kernel_size=1, bias=False), nn.PReLU()) for _ in bins
        )
        self.fuse_conv = nn.Sequential(conv3x3(channels + reduced * len(bins), channels, bias=False), nn.PReLU())

    def pool(self, x: Tensor) -> list[Tensor]:
        """Adaptive average of ``x`` over each bin grid: one ``(B, C, b, b)`` tensor per bin."""
        return region_average_pool(x, self.bins)

    def fuse(
        self,
        x: Tensor,
        pooled: list[Tensor],
        full_size: tuple[int, int] | None = None,
        offset: tuple[int, int] = (0, 0),
    ) -> Tensor:
        """Upsample each branch to the frame and fuse it with ``x``.

        ``x`` may be a window of the frame: ``full_size`` is the frame's (H, W) and
        ``offset`` the window's top-left corner, so the bilinear upsampling is evaluated at
        the window's true frame coordinates.
        """
        h, w = x.shape[-2:]
        full_size = full_size or (h, w)
        conv, act = self.fuse_conv
        # The window path answers in float32; keep x's dtype so the 64-channel concatenation
        # costs what it costs in the whole-frame pass. The upsampled contexts live only inside
        # the concatenation, and the concatenation is dropped before the activation.
        contexts = (
            upsample_window(branch(p), full_size, offset, (h, w)).to(x.dtype)
            for branch, p in zip(self.branches, pooled, strict=True)
        )
        fused = torch.cat([x, *contexts], dim=1)
        features = conv(fused)
        del fused
        return act(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(x, self.pool(x))


def upsample_window(grid: Tensor, full_size: tuple[int, int], offset: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Bilinear (align_corners=True) upsampling of ``grid`` to ``full_size``, cropped to a window.

    Equals ``F.interpolate(grid, full_size, mode="bilinear", align_corners=True)`` sliced at
    ``offset`` with ``size``, without materialising the full-size map.
    """
    if offset == (0, 0) and tuple(size) == tuple(full_size):
        return F.interpolate(grid, size=full_size, mode="bilinear", align_corners=True)
    ys = _align_corners_coords(offset[0], size[0], full_size[0], grid)
    xs = _align_corners_coords(offset[1], size[1], full_size[1], grid)
    # grid_sample takes normalised coordinates in [-1, 1] over the source grid's corner pixels.
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    sample_at = torch.stack([gx, gy], dim=-1).unsqueeze(0).expand(grid.shape[0], -1, -1, -1)
    # In float32 whatever the compute dtype: half precision would misplace samples by up to a
    # pixel (float16) or several (bfloat16) on a 5000-pixel-wide frame. The grid is tiny.
    return F.grid_sample(grid.float(), sample_at, mode="bilinear", align_corners=True)


def _align_corners_coords(start: int, count: int, full: int, like: Tensor) -> Tensor:
    """Frame rows (or columns) ``start .. start+count`` as grid_sample coordinates in [-1, 1]."""
    index = torch.arange(start, start + count, device=like.device, dtype=torch.float32)
    if full <= 1:  # a one-pixel frame samples the grid's first cell, as F.interpolate does
        return torch.full_like(index, -1.0)
    return index / (full - 1) * 2 - 1


class IlluminationHead(nn.Module):
    """The last convolution and its ReLU, in float32 whatever the autocast dtype (see above)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv3x3(channels, 1)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.act(self.conv(x.float()))


class Enhancer(nn.Module):
    """The illumination-map enhancer; see the module docstring for the structure."""

    def __init__(self, spec: EnhancerSpec = EnhancerSpec()) -> None:
        super().__init__()
        self.spec = spec
        width, wide = spec.width, spec.wide_width
        self.stem = nn.Sequential(
            conv3x3(spec.in_ch, width), nn.LeakyReLU(LEAKY_SLOPE), ResidualBlock(width), ResidualBlock(width)
        )
        self.context = PyramidPooling(width)
        self.body = nn.Sequential(
            conv3x3(width, wide),
            ResidualBlock(wide),
            ResidualBlock(wide),
            conv3x3(wide, width),
            ResidualBlock(width),
            ResidualBlock(width),
        )
        self.head = IlluminationHead(width)

    def illumination(self, x: Tensor) -> Tensor:
        """The illumination map at the input's resolution (before any upsampling), float32."""
        return self.illumination_from_context(self.context(self.stem(x)))

    def illumination_from_context(self, features: Tensor) -> Tensor:
        """Body and head on the context block's output (the exact tiler calls this per tile).

        Layer by layer rather than through the Sequential, whose call would keep its input
        map alive to the end.
        """
        for layer in self.body:
            features = layer(features)
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return apply_illumination(x, self.full_illumination(x))

    def full_illumination(self, x: Tensor) -> Tensor:
        """Illumination at full resolution, predicted at 1/s of it when ``illumination_scale`` > 1."""
        s = self.spec.illumination_scale
        if s == 1:
            return self.illumination(x)
        return expand_illumination(self.illumination(shrink_for_illumination(x, s)), x.shape[-2:])


def shrink_for_illumination(x: Tensor, scale: int) -> Tensor:
    """The frame the illumination is predicted from when ``illumination_scale`` > 1.

    Area averaging to ``ceil(H/s) x ceil(W/s)`` (adaptive average pooling, so sizes that are
    not multiples of s still work); the division itself always uses the full-resolution frame.
    """
    h, w = x.shape[-2:]
    return F.adaptive_avg_pool2d(x, (math.ceil(h / scale), math.ceil(w / scale)))


def expand_illumination(illumination: Tensor, size: Sequence[int]) -> Tensor:
    """Plain bilinear upsampling of a low-resolution illumination map back to the frame.

    Bilinear, not guided: the illumination is smooth by construction, the upsampling stays
    local (each output pixel reads a 2 x 2 neighbourhood), and trainer and daemon use this
    same function. Edges sharper than s pixels in the illumination are softened. In float32,
    like the head that made the map.
    """
    with torch.autocast(illumination.device.type, enabled=False):
        return F.interpolate(illumination.float(), size=tuple(size), mode="bilinear", align_corners=False)


def apply_illumination(x: Tensor, illumination: Tensor) -> Tensor:
    """Retinex division: the enhanced frame is the input over its illumination, in [0, 1].

    In float32 whatever the inputs' dtypes (see the module docstring).
    """
    return (x.float() / (illumination.float() + ILLUMINATION_EPS)).clamp(0.0, 1.0)


def upgrade_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Weights saved before the head was its own part kept it as ``body.6``: rename its keys."""
    renamed = {"body.6.weight": "head.conv.weight", "body.6.bias": "head.conv.bias"}
    return {renamed.get(key, key): value for key, value in state.items()}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
