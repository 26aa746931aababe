"""Exact tiled inference: the enhancer on frames larger than the memory budget, without seams.

The pyramid pooling makes every output pixel depend on averages over the whole frame, so
cutting the frame into independent tiles would change the result and leave seams. Two
passes reproduce the whole-frame result instead:

1. **Pool pass.** Each tile runs through the stem (the convolutions before the pooling)
   with a halo wide enough that its core is exact. The core's values are added to the
   region sums of the 1/2/3/6 bin grids (:class:`drdaemon.model.pooling.RegionSums`, the
   same code the whole-frame pass pools with), which follow adaptive average pooling's own
   region bounds.
2. **Output pass.** Each tile runs again, with the halo of the whole network, and the
   context block is fused with the global averages from pass 1 at the tile's true frame
   coordinates (:meth:`PyramidPooling.fuse` with ``full_size`` and ``offset``). The tile's
   core is exact and is written into the output.

Zero padding at the frame's border is the same as in the whole-frame pass because tiles are
clipped to the frame; inside the frame the halo absorbs the padding of the tile's edge.
The stem runs twice (about 15 % more compute), the price of a fixed memory ceiling.
With ``illumination_scale`` s > 1 the tiles cover the downsampled frame; the bilinear
upsampling of the illumination map back to full size is a one-channel operation done once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

from torch import Tensor, nn

from drdaemon.model.network import Enhancer, expand_illumination, shrink_for_illumination
from drdaemon.model.pooling import RegionSums

#: Peak live activations of a whole-frame forward pass, in channel maps of the compute dtype.
#: Without autograd two 64-channel maps and one band of a residual block are alive at once
#: (128 + 4, see :mod:`drdaemon.model.network`). Measured on the CPU as the peak resident
#: memory of a 1024 x 2048 pass: 132 maps in bfloat16 and 135 in float32 with channels_last
#: (224 before the in-place residual blocks); in plain NCHW layout oneDNN adds reorder
#: buffers (257 maps in bfloat16, 192 in float32). CUDA engines calibrate it in their warm-up.
CPU_ACTIVATION_MAPS = 138
CPU_ACTIVATION_MAPS_NCHW = 270


def cpu_activation_maps(channels_last: bool) -> float:
    """The planner's activation maps on the CPU, which has no warm-up calibration."""
    return CPU_ACTIVATION_MAPS if channels_last else CPU_ACTIVATION_MAPS_NCHW


#: Per-pixel bytes of the frame-sized buffers outside the network: raw upload, float input,
#: illumination map, float and uint16 output.
FRAME_BYTES_PER_PIXEL = 24
#: Smallest tile core side the planner will use, whatever the budget says.
MIN_TILE = 64


def conv_halo(module: nn.Module) -> int:
    """Pixels of context each side that a stack of convolutions needs: one per 3x3 layer."""
    halo = 0
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            halo += (layer.kernel_size[0] // 2) * layer.dilation[0]
    return halo


def stem_halo(model: Enhancer) -> int:
    """Halo of the convolutions before the pooling (5 for the published network)."""
    return conv_halo(model.stem)


def head_halo(model: Enhancer) -> int:
    """Halo of the convolutions after the pooling: the fuse conv, the body and the head (12)."""
    return conv_halo(model.context.fuse_conv) + conv_halo(model.body) + conv_halo(model.head)


@dataclass(frozen=True)
class TileSize:
    """Core size of the output tiles (the halo comes on top), in pixels of the network input."""

    height: int
    width: int


def spans(length: int, tile: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``0..length`` with near-equal parts of at most ``tile``."""
    count = max(1, math.ceil(length / max(tile, 1)))
    cuts = [length * i // count for i in range(count + 1)]
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def _grow(span: tuple[int, int], halo: int, length: int) -> tuple[int, int]:
    return max(0, span[0] - halo), min(length, span[1] + halo)


def _tiles(height: int, width: int, tile: TileSize) -> Iterator[tuple[tuple[int, int], tuple[int, int]]]:
    for rows in spans(height, tile.height):
        for cols in spans(width, tile.width):
            yield rows, cols


def pooled_context(model: Enhancer, x: Tensor, tile: TileSize) -> list[Tensor]:
    """Pass 1: the adaptive averages of the stem's output for every bin, computed tile by tile.

    Equals ``model.context.pool(model.stem(x))`` without holding the stem's output for the
    whole frame.
    """
    height, width = x.shape[-2:]
    halo = stem_halo(model)
    sums = RegionSums(height, width, model.context.bins)
    for rows, cols in _tiles(height, width, tile):
        wr, wc = _grow(rows, halo, height), _grow(cols, halo, width)
        feature = model.stem(x[..., wr[0] : wr[1], wc[0] : wc[1]])
        core = feature[..., rows[0] - wr[0] : rows[1] - wr[0], cols[0] - wc[0] : cols[1] - wc[0]]
        sums.add(core, rows, cols)
    return sums.averages()


def tiled_illumination(model: Enhancer, x: Tensor, tile: TileSize) -> Tensor:
    """Pass 1 then pass 2: ``model.illumination(x)`` computed tile by tile, exactly."""
    height, width = x.shape[-2:]
    pooled = pooled_context(model, x, tile)
    inner, outer = head_halo(model), head_halo(model) + stem_halo(model)
    out: Tensor | None = None
    for rows, cols in _tiles(height, width, tile):
        wr, wc = _grow(rows, outer, height), _grow(cols, outer, width)
        fr, fc = _grow(rows, inner, height), _grow(cols, inner, width)
        feature = model.stem(x[..., wr[0] : wr[1], wc[0] : wc[1]])
        # Keep only the stem output the rest of the network needs (exact up to its halo).
        feature = feature[..., fr[0] - wr[0] : fr[1] - wr[0], fc[0] - wc[0] : fc[1] - wc[0]]
        fused = model.context.fuse(feature, pooled, full_size=(height, width), offset=(fr[0], fc[0]))
        illumination = model.illumination_from_context(fused)
        core = illumination[..., rows[0] - fr[0] : rows[1] - fr[0], cols[0] - fc[0] : cols[1] - fc[0]]
        if out is None:
            out = core.new_empty((*core.shape[:2], height, width))
        out[..., rows[0] : rows[1], cols[0] : cols[1]] = core
    assert out is not None
    return out


def tiled_full_illumination(model: Enhancer, x: Tensor, tile: TileSize) -> Tensor:
    """``model.full_illumination(x)`` within a memory budget; tiles cover the network's input."""
    s = model.spec.illumination_scale
    if s == 1:
        return tiled_illumination(model, x, tile)
    small = shrink_for_illumination(x, s)
    return expand_illumination(tiled_illumination(model, small, tile), x.shape[-2:])


def activation_maps_from_peak(peak_bytes: int, side: int, illumination_scale: int, element_size: int) -> float:
    """The planner's activation maps from the measured peak of a whole ``side`` x ``side`` frame.

    :func:`plan_tiles` charges frame-sized buffers separately, so they are taken out; the
    rest is per pixel of the network's input (the frame shrunk by the illumination scale),
    with 10 % margin for the allocator's rounding on frames of other sizes.
    """
    network_peak = max(peak_bytes - FRAME_BYTES_PER_PIXEL * side * side, 0)
    network_pixels = math.ceil(side / illumination_scale) ** 2
    return 1.1 * network_peak / (network_pixels * element_size)


def plan_tiles(
    height: int, width: int, illumination_scale: int, budget_bytes: int, activation_bytes_per_pixel: float, halo: int
) -> TileSize | None:
    """The tile size that keeps a frame within ``budget_bytes``, or None when it fits whole.

    ``activation_bytes_per_pixel`` is the network's peak per input pixel (activation maps
    times the compute dtype's size); frame-sized buffers are charged at full resolution.
    A budget too small for even :data:`MIN_TILE` tiles still gets them: the frame runs,
    above budget, rather than fail.
    """
    small_h, small_w = math.ceil(height / illumination_scale), math.ceil(width / illumination_scale)
    available = budget_bytes - height * width * FRAME_BYTES_PER_PIXEL
    if small_h * small_w * activation_bytes_per_pixel <= available:
        return None
    tile_pixels = max(available, 0) / activation_bytes_per_pixel
    side = max(MIN_TILE, math.isqrt(int(tile_pixels)) - 2 * halo)
    rows, cols = spans(small_h, side), spans(small_w, side)
    return TileSize(height=max(b - a for a, b in rows), width=max(b - a for a, b in cols))
