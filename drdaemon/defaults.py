"""The engines' method names and default parameters: one source for config, engines, evaluation, trainer.

The daemon's ``[engine]`` table, the engines' own defaults, the evaluation's baselines and the
trainer's CLAHE prior all read these, so that a default changed here changes everywhere and
a frame the daemon enhances is windowed exactly as the trainer saw its crops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal, get_args

#: Percentile window applied to every frame before enhancement (robust to dead pixels and
#: collimator edges; see :func:`drdaemon.kernels.window.robust_window`), and the CLAHE clip
#: limit and tile grid: defined beside their kernels, which import nothing of the project.
from drdaemon.kernels.tone import CLAHE_CLIP_LIMIT, CLAHE_TILE_GRID
from drdaemon.kernels.window import HIGH_PERCENTILE, LOW_PERCENTILE

#: Output gamma of the classical engines (1: none).
GAMMA: Final = 1.0

#: The classical methods (:class:`drdaemon.engines.classical.ClassicalEngine`). The names
#: ``engine.name`` accepts are the engine registry's (:data:`drdaemon.engines.registry.ENGINES`).
ClassicalMethod = Literal["classical", "he", "stretch", "identity"]
CLASSICAL_METHODS: Final[tuple[str, ...]] = get_args(ClassicalMethod)

#: Arithmetic of the learned engine (``engine.precision``).
Precision = Literal["float32", "float16", "bfloat16"]
PRECISIONS: Final[tuple[str, ...]] = get_args(Precision)
#: What ``engine.precision`` accepts: a precision, or ``auto`` (:func:`precision_for_device`).
PrecisionSetting = Literal["auto", Precision]
PRECISION: Final = "auto"
#: The fastest precision per device type that meets the project's bound against float32 (RMS
#: <= 16 and max <= 128 output levels for float16, RMS <= 40 for bfloat16; README, "Precision
#: and memory"): on a CPU bfloat16 (float16 has no fast CPU kernels: about 3 times slower),
#: on CUDA float16 (tensor cores, and 8 times finer steps than bfloat16).
DEVICE_PRECISION: Final[dict[str, Precision]] = {"cpu": "bfloat16", "cuda": "float16"}


def precision_for_device(setting: str, device_type: str) -> Precision:
    """The precision an engine on ``device_type`` runs for ``engine.precision = setting``.

    An explicit precision is kept as it is; ``auto`` picks :data:`DEVICE_PRECISION` (float32 on
    a device type it does not list).
    """
    if setting == "auto":
        return DEVICE_PRECISION.get(device_type, "float32")
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be auto or one of {sorted(PRECISIONS)}, not {setting!r}")
    return setting  # type: ignore[return-value]  # one of PRECISIONS, checked above


#: Device memory one frame's forward pass may use before the learned engine tiles it exactly.
MEMORY_BUDGET_MB: Final = 6144

#: Lossless compressions of a TIFF output (``output.compression``), all with the horizontal
#: predictor: ``lzw`` (TIFF code 5) is the one TIFF 6.0 itself defines the predictor for, and
#: every libtiff-based viewer and every ImageJ 1.x opens it; ``adobe_deflate`` (code 8) is
#: smaller and libtiff reads it, but older ImageJ releases do not undo its predictor; ``deflate``
#: writes the obsolete code 32946; ``zstd`` (code 50000) is the smallest and fastest, and many
#: plant viewers cannot open it. ``drdaemon bench --compression-table`` measures them.
Compression = Literal["none", "lzw", "adobe_deflate", "deflate", "zstd"]
COMPRESSIONS: Final[tuple[str, ...]] = get_args(Compression)
COMPRESSION: Final = "lzw"

#: Largest frame accepted, in pixels and in file bytes (``[input]``).
MAX_PIXELS: Final = 200_000_000
MAX_BYTES: Final = 2_000_000_000

__all__ = [
    "CLAHE_CLIP_LIMIT",
    "CLAHE_TILE_GRID",
    "CLASSICAL_METHODS",
    "COMPRESSION",
    "COMPRESSIONS",
    "DEVICE_PRECISION",
    "GAMMA",
    "HIGH_PERCENTILE",
    "LOW_PERCENTILE",
    "MAX_BYTES",
    "MAX_PIXELS",
    "MEMORY_BUDGET_MB",
    "PRECISION",
    "PRECISIONS",
    "ClassicalMethod",
    "Compression",
    "Precision",
    "PrecisionSetting",
    "precision_for_device",
]

#: The enhancer weights shipped with the package: ``engine.name = "net"`` without
#: ``engine.weights`` and the evaluation's ``net`` method without a path run them. Their model
#: card (data, CLIP, losses, figures) lies beside them.
SHIPPED_WEIGHTS: Final = Path(__file__).parent / "io" / "shipped" / "enhancer.safetensors"
