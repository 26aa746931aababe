"""``python -m drdaemon.synth``: write the physics-based synthetic DR benchmark (:mod:`drdaemon.physics`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from drdaemon.physics import generate, parse_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m drdaemon.synth",
        description="Generate a physics-based synthetic DR benchmark: paired test frames with labels and "
        "defect boxes, plus unpaired training folders.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--pairs", type=int, default=50, help="paired test frames (default 50)")
    parser.add_argument(
        "--train",
        type=int,
        default=0,
        help="frames in each unpaired training folder, train/abnormal and train/normal (default 0)",
    )
    parser.add_argument(
        "--size", default="1024x1024", help="WIDTHxHEIGHT, from 512x512 up to 5732x2333 (default 1024x1024)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        size = parse_size(args.size)
    except ValueError as exc:
        parser.error(str(exc))
    if args.pairs < 0 or args.train < 0:
        parser.error("--pairs and --train must not be negative")
    generate(args.out, args.pairs, args.train, size, args.seed, progress=not args.no_progress)
    print(
        f"wrote {args.pairs} test pairs (test/input, test/label, test/mask, test/defects.json) and {args.train} "
        f"frames in each of train/abnormal and train/normal under {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
