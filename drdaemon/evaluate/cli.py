"""``python -m drdaemon.evaluate``: the evaluation's command line (the work is in :mod:`drdaemon.evaluate.run`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from drdaemon.config import ConfigError, load_settings
from drdaemon.defaults import PRECISIONS
from drdaemon.errors import FrameError
from drdaemon.evaluate.baselines import MethodError, method_names
from drdaemon.evaluate.run import DataError, evaluate
from drdaemon.io.readers import DicomError
from drdaemon.service.frame import read_limits

DEFAULT_METHODS = "identity,stretch,gamma,he,clahe,filtered"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m drdaemon.evaluate",
        description="Enhance a folder of DR frames with several methods; print and write a metrics table "
        "(table.md), per-frame scores (scores.json) and a comparison figure (figure.png).",
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="paired folder (input/ + label/, or a synth output root) or a folder of frames",
    )
    parser.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help=f"comma-separated, among: {method_names()}; net alone runs the shipped weights, pipeline alone the "
        f"[engine.pipeline] of --config (net steps included; the detail preset without one) (default {DEFAULT_METHODS})",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for table.md, scores.json, figure.png")
    parser.add_argument(
        "--device",
        default="auto",
        help="device of the net engine and of a configured pipeline's net steps: auto, cpu, cuda:N",
    )
    parser.add_argument(
        "--precision",
        default="float32",
        choices=PRECISIONS,
        help="precision of the net engine (default float32; a configured pipeline's net steps keep their own)",
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N frames")
    parser.add_argument("--figure-frame", default=None, help="file name of the frame to show in the figure")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="the daemon's TOML configuration, for its [input] table (size limits, the .raw layout) and the "
        "[engine.pipeline] that the pipeline method runs",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        result = evaluate(
            args.data,
            args.methods.split(","),
            args.out,
            args.device,
            args.precision,
            args.limit,
            args.figure_frame,
            progress=not args.no_progress,
            limits=read_limits(settings.input),
            engine=settings.engine,
        )
    except (DataError, MethodError, DicomError, FrameError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.table)
    print(
        f"wrote {result.table_path}, {result.scores_path}" + (f", {result.figure_path}" if result.figure_path else "")
    )
    return 0
