"""Adaptive average pooling as sums over regions: the pyramid pooling's global averages.

``F.adaptive_avg_pool2d`` hands each output cell to one GPU thread, which adds up the
cell's whole region alone: on a full DR frame that is millions of sequential additions per
cell of the 2 x 2, 3 x 3 and 6 x 6 grids. Here the map is cut at every region boundary of
every grid into a few pieces per axis; each piece is summed by an ordinary parallel
reduction, and each region then adds up the pieces it holds. The piece sums also add up
over tiles, which is how the exact tiler (:mod:`drdaemon.model.tiling`) gets the
whole-frame averages without holding the whole feature map.

Regions follow adaptive average pooling exactly: bin ``i`` of ``b`` over a length ``n``
covers ``floor(i*n/b)`` to ``ceil((i+1)*n/b)``, so neighbouring regions overlap when ``n``
is not a multiple of ``b`` (a pixel then counts in both).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor


def bin_bounds(length: int, bins: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` rows (or columns) adaptive average pooling averages for each bin."""
    return [((i * length) // bins, -((-(i + 1) * length) // bins)) for i in range(bins)]


def _cuts(length: int, bins: tuple[int, ...]) -> list[int]:
    """Every region boundary of every grid along one axis, ends included, sorted."""
    return sorted({edge for b in bins for region in bin_bounds(length, b) for edge in region})


def _overlap(cuts: list[int], span: tuple[int, int]) -> tuple[int, list[tuple[int, int]]]:
    """The first piece ``span`` touches and the parts of the pieces inside it, relative to ``span``."""
    touched = [
        (i, (max(a, span[0]) - span[0], min(b, span[1]) - span[0]))
        for i, (a, b) in enumerate(itertools.pairwise(cuts))
        if a < span[1] and b > span[0]
    ]
    return touched[0][0], [part for _, part in touched]


class RegionSums:
    """Piece sums of one feature map for the given bin grids, fed whole or window by window.

    Sums are taken in float32 and kept in float64, so averages over a whole frame do not
    lose precision whatever the compute dtype. Everything stays on the map's device: no
    host round trip, no synchronisation.
    """

    def __init__(self, height: int, width: int, bins: tuple[int, ...]) -> None:
        self.height, self.width, self.bins = height, width, bins
        self.row_cuts, self.col_cuts = _cuts(height, bins), _cuts(width, bins)
        self.total: Tensor | None = None
        #: The dtype of the map, which the averages are answered in.
        self.dtype: torch.dtype | None = None

    def add(self, window: Tensor, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None) -> None:
        """Add a window of the map whose frame rows and columns are ``rows`` and ``cols`` (default: all)."""
        rows = rows or (0, self.height)
        cols = cols or (0, self.width)
        first_row, row_parts = _overlap(self.row_cuts, rows)
        first_col, col_parts = _overlap(self.col_cuts, cols)
        # Reduce in the order the map is stored: summing a channels_last map over rows through
        # its (B, C, H, W) view is an order of magnitude slower on the CPU.
        if window.stride(1) < window.stride(-1):  # channels vary fastest: channels_last
            view, row_dim, col_dim = window.movedim(1, -1), 1, 2
        else:
            view, row_dim, col_dim = window, -2, -1
        by_rows = torch.stack(
            [view.narrow(row_dim, a, b - a).sum(dim=row_dim, dtype=torch.float32) for a, b in row_parts], dim=row_dim
        )
        block = torch.stack([by_rows.narrow(col_dim, a, b - a).sum(dim=col_dim) for a, b in col_parts], dim=col_dim)
        if row_dim == 1:
            block = block.movedim(-1, 1)
        block = block.to(torch.float64)
        if self.total is None:
            self.dtype = window.dtype
            self.total = block.new_zeros((*block.shape[:2], len(self.row_cuts) - 1, len(self.col_cuts) - 1))
        self.total[..., first_row : first_row + len(row_parts), first_col : first_col + len(col_parts)] += block

    def averages(self) -> list[Tensor]:
        """The adaptive average of everything added, one ``(B, C, b, b)`` tensor per bin grid, in the map's dtype."""
        if self.total is None:
            raise ValueError("no window was added")
        grids = []
        for b in self.bins:
            rows = torch.stack(
                [self._span(self.total, self.row_cuts, r, dim=-2) for r in bin_bounds(self.height, b)], dim=-2
            )
            grids.append(
                torch.stack([self._span(rows, self.col_cuts, c, dim=-1) for c in bin_bounds(self.width, b)], dim=-1).to(
                    self.dtype
                )
            )
        return grids

    @staticmethod
    def _span(pieces: Tensor, cuts: list[int], region: tuple[int, int], dim: int) -> Tensor:
        """Mean over one region along ``dim``: the sum of its pieces over its length."""
        start, stop = cuts.index(region[0]), cuts.index(region[1])
        return pieces.narrow(dim, start, stop - start).sum(dim=dim) / (region[1] - region[0])


def region_average_pool(x: Tensor, bins: tuple[int, ...]) -> list[Tensor]:
    """``[F.adaptive_avg_pool2d(x, b) for b in bins]``, computed as region sums (see the module)."""
    sums = RegionSums(x.shape[-2], x.shape[-1], bins)
    sums.add(x)
    return sums.averages()
