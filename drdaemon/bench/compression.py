"""``drdaemon bench --compression-table``: size and time of every ``output.compression`` on one frame.

The frame is what the outbox holds: the classical engine's output of a physics-based
synthetic part (:mod:`drdaemon.physics`, 5732 x 2333 by default) or of ``--frame``.
Each option is encoded with the daemon's own encoder (:func:`drdaemon.io.formats.encode_tiff_u16`),
written as the daemon writes (:func:`drdaemon.io.durable.atomic_write`, fsynced) into a
temporary folder, and read back with tifffile, which must give the same pixels.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drdaemon.bench.timing import median_seconds
from drdaemon.defaults import COMPRESSION, COMPRESSIONS


@dataclass(frozen=True)
class CompressionFigures:
    """One option's figures on one frame (median seconds of ``repeats`` runs)."""

    compression: str
    tiff_code: int
    encode_s: float
    write_s: float
    decode_s: float
    nbytes: int


def measure_compressions(
    pixels: np.ndarray, repeats: int = 3, compressions: tuple[str, ...] = COMPRESSIONS
) -> list[CompressionFigures]:
    """Encode, write and decode ``pixels`` with each compression; a lossy round trip raises."""
    with tempfile.TemporaryDirectory(prefix="drdaemon-compression-") as tmp:
        return [measure_compression(pixels, name, Path(tmp) / name, repeats) for name in compressions]


def measure_compression(pixels: np.ndarray, compression: str, folder: Path, repeats: int) -> CompressionFigures:
    """One option's figures; its files go into ``folder`` (created), one per timed write."""
    import tifffile

    from drdaemon.io.durable import atomic_write
    from drdaemon.io.formats import encode_tiff_u16

    folder.mkdir(parents=True)
    data = encode_tiff_u16(pixels, None, compression)
    encode_s = median_seconds(lambda: encode_tiff_u16(pixels, None, compression), repeats)
    targets = iter([folder / f"{run}.tif" for run in range(max(1, repeats))])
    write_s = median_seconds(lambda: atomic_write(next(targets), encode_tiff_u16(pixels, None, compression)), repeats)
    first = folder / "0.tif"
    decode_s = median_seconds(lambda: tifffile.imread(first), repeats)
    with tifffile.TiffFile(first) as tif:
        page = tif.pages[0]
        back, code = page.asarray(), int(page.compression)
    if not np.array_equal(back, pixels):
        raise AssertionError(f"{compression}: the TIFF read back differs from the frame written")
    return CompressionFigures(compression, code, encode_s, write_s, decode_s, len(data))


def compression_table(rows: list[CompressionFigures], raw_bytes: int) -> str:
    """The figures as a markdown table; sizes also as a share of the uncompressed frame."""
    lines = [
        "| output.compression | TIFF code | encode ms | write ms (encode + fsynced write) | read ms | MB | of raw |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        default = " (default)" if row.compression == COMPRESSION else ""
        lines.append(
            f"| `{row.compression}`{default} | {row.tiff_code} | {row.encode_s * 1e3:.0f} | {row.write_s * 1e3:.0f} "
            f"| {row.decode_s * 1e3:.0f} | {row.nbytes / 1e6:.1f} | {row.nbytes / raw_bytes:.0%} |"
        )
    return "\n".join(lines)


def synthetic_part(height: int, width: int, seed: int = 0) -> np.ndarray:
    """The abnormal exposure of the first test part of the synthetic benchmark at this size."""
    from drdaemon.physics import TEST_SET, generate_one

    abnormal, _label, _part, _physics = generate_one(seed, TEST_SET, 0, height, width)
    return abnormal


def print_compression_table(frame: np.ndarray, source: str, repeats: int) -> None:
    """Enhance ``frame`` with the classical engine, then print every compression's figures."""
    from drdaemon.engines.classical import ClassicalEngine

    engine = ClassicalEngine()
    engine.warm_up()
    enhanced = engine.enhance(frame).pixels
    rows = measure_compressions(enhanced, repeats)
    print(f"compression of the classical engine's output of {source}, median of {repeats}:")
    print(compression_table(rows, enhanced.size * enhanced.itemsize))


__all__ = [
    "CompressionFigures",
    "compression_table",
    "measure_compression",
    "measure_compressions",
    "print_compression_table",
    "synthetic_part",
]
