import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from drdaemon.model.network import apply_illumination
from drdaemon.model.pooling import bin_bounds, region_average_pool
from drdaemon.model.tiling import (
    FRAME_BYTES_PER_PIXEL,
    TileSize,
    activation_maps_from_peak,
    head_halo,
    plan_tiles,
    pooled_context,
    spans,
    stem_halo,
    tiled_full_illumination,
)
from tests.testkit import lit_enhancer


def test_halos_match_the_published_structure() -> None:
    net = lit_enhancer()
    assert stem_halo(net) == 5  # stem conv + two residual blocks
    assert head_halo(net) == 12  # fuse conv + 11 convolutions of the body


@pytest.mark.parametrize("length,bins", [(7, 6), (13, 6), (101, 3), (5, 2), (6, 6), (1, 3)])
def test_bin_bounds_reproduce_adaptive_average_pooling(length: int, bins: int) -> None:
    x = torch.rand(1, 2, length, length + 3, dtype=torch.float64)
    rows, cols = bin_bounds(length, bins), bin_bounds(length + 3, bins)
    manual = torch.stack(
        [torch.stack([x[..., r0:r1, c0:c1].mean(dim=(-2, -1)) for c0, c1 in cols], dim=-1) for r0, r1 in rows], dim=-2
    )
    assert torch.allclose(manual, F.adaptive_avg_pool2d(x, bins))


@pytest.mark.parametrize("size", [(7, 13), (53, 71), (1, 5), (36, 36)])
def test_region_pooling_equals_adaptive_average_pooling_forward_and_backward(size: tuple[int, int]) -> None:
    """The pyramid pooling's fast GPU form is the same function as the published pooling."""
    bins = (1, 2, 3, 6)
    x = torch.rand(2, 3, *size, dtype=torch.float32, requires_grad=True)
    weights = [torch.rand(2, 3, b, b) for b in bins]
    ours = region_average_pool(x, bins)
    reference = [F.adaptive_avg_pool2d(x, b) for b in bins]
    for a, b in zip(ours, reference, strict=True):
        assert a.dtype == x.dtype and a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-6)
    zero = torch.zeros(())
    (grad_ours,) = torch.autograd.grad(sum(((w * a).sum() for w, a in zip(weights, ours, strict=True)), zero), x)
    (grad_ref,) = torch.autograd.grad(sum(((w * b).sum() for w, b in zip(weights, reference, strict=True)), zero), x)
    assert torch.allclose(grad_ours, grad_ref, atol=1e-6)


def test_region_pooling_keeps_half_precision_maps_in_their_dtype_and_accurate() -> None:
    x = torch.rand(1, 4, 301, 203)
    for dtype in (torch.bfloat16, torch.float16):
        pooled = region_average_pool(x.to(dtype), (1, 6))
        assert all(p.dtype == dtype for p in pooled)
        exact = [F.adaptive_avg_pool2d(x.to(dtype).double(), b) for b in (1, 6)]
        assert all((p.double() - e).abs().max() < 1e-2 for p, e in zip(pooled, exact, strict=True))


def test_spans_cover_the_length_once_within_the_tile() -> None:
    for length, tile in [(100, 30), (7, 7), (5, 64), (1001, 17)]:
        parts = spans(length, tile)
        assert parts[0][0] == 0 and parts[-1][1] == length
        assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
        assert max(b - a for a, b in parts) <= tile


def test_pool_pass_equals_pooling_the_whole_stem_output() -> None:
    net = lit_enhancer()
    x = torch.rand(1, 1, 53, 71)
    with torch.no_grad():
        expected = net.context.pool(net.stem(x))
        got = pooled_context(net, x, TileSize(11, 16))
    for e, g in zip(expected, got, strict=True):
        assert torch.allclose(e, g, atol=1e-6)


@pytest.mark.parametrize(
    "in_ch,scale,size,tile",
    [
        (1, 1, (67, 89), (29, 40)),
        (3, 1, (61, 47), (13, 9)),  # tiles smaller than the halo
        (1, 2, (83, 101), (17, 22)),
        (1, 4, (131, 97), (11, 13)),
    ],
)
def test_tiled_output_equals_whole_frame(in_ch: int, scale: int, size: tuple[int, int], tile: tuple[int, int]) -> None:
    net = lit_enhancer(in_ch, scale)
    x = torch.rand(1, in_ch, *size)
    with torch.no_grad():
        whole_l, whole = net.full_illumination(x), net(x)
        tiled_l = tiled_full_illumination(net, x, TileSize(*tile))
        tiled = apply_illumination(x, tiled_l)
    assert whole.shape == tiled.shape == x.shape
    assert float(whole_l.max()) > 0.1  # a meaningful map, not a dead ReLU
    assert (whole_l - tiled_l).abs().max() <= 1e-4
    assert (whole - tiled).abs().max() <= 1e-4


def test_independent_tiles_would_not_match() -> None:
    """Why two passes are needed: tiles that pool only themselves change the result."""
    net = lit_enhancer()
    x = torch.rand(1, 1, 64, 90)
    x[..., :, 45:] *= 0.2  # a darker right half makes the global averages matter
    with torch.no_grad():
        whole = net.full_illumination(x)
        halves = torch.cat([net.full_illumination(x[..., :, :45]), net.full_illumination(x[..., :, 45:])], dim=-1)
        exact = tiled_full_illumination(net, x, TileSize(64, 45))
    assert (whole - halves).abs().max() > 1e-3
    assert (whole - exact).abs().max() <= 1e-4


def test_plan_runs_whole_frames_that_fit_and_tiles_the_rest_within_budget() -> None:
    bytes_per_pixel, halo = 400.0, 17
    h, w = 2333, 5732
    fixed = h * w * FRAME_BYTES_PER_PIXEL
    assert plan_tiles(h, w, 1, int(h * w * bytes_per_pixel + fixed), bytes_per_pixel, halo) is None
    budget = 512 << 20
    tile = plan_tiles(h, w, 1, budget, bytes_per_pixel, halo)
    assert tile is not None
    assert (tile.height + 2 * halo) * (tile.width + 2 * halo) * bytes_per_pixel + fixed <= budget
    # s = 4 shrinks the network's input 16-fold: the same budget then holds it whole.
    assert (
        plan_tiles(h, w, 4, int(math.ceil(h / 4) * math.ceil(w / 4) * bytes_per_pixel + fixed), bytes_per_pixel, halo)
        is None
    )
    bigger = plan_tiles(h, w, 1, 2 * budget, bytes_per_pixel, halo)
    assert bigger is not None
    assert bigger.height * bigger.width > tile.height * tile.width


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_calibrated_peak_plans_the_calibration_frame_whole_only_when_it_fits(scale: int) -> None:
    """What the CUDA warm-up measures and what the planner charges agree, at every scale."""
    side, element, halo = 1024, 2, 17
    peak = side * side * (FRAME_BYTES_PER_PIXEL + 384 // scale**2)  # frame buffers + activations
    maps = activation_maps_from_peak(peak, side, scale, element)
    assert plan_tiles(side, side, scale, int(peak * 1.15), maps * element, halo) is None
    assert plan_tiles(side, side, scale, int(peak * 0.9), maps * element, halo) is not None
