"""``python -m trainer.oracle``: the reachability oracle (:mod:`trainer.radiograph.oracle`) fitted and scored.

The fits are the radiograph room's; the scoring is the project's evaluation
(:mod:`drdaemon.evaluate.run`), which only a command line of the trainer may use: the rooms
under ``trainer/`` stay below the evaluation's floor.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from drdaemon.evaluate.run import evaluate, find_dataset
from drdaemon.io.readers import read_pixels
from drdaemon.model.network import ALLOWED_SCALES
from drdaemon.physics import parse_size
from trainer.radiograph.oracle import (
    ORACLE_NOTE,
    OracleConfig,
    benchmark_folder,
    fit,
    ideal_map_scores,
    training_pairs,
)


def benchmark_pairs(bench: Path, limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(input, label) frames of the benchmark at ``bench``, read as the evaluation reads them."""
    dataset = find_dataset(bench)
    for path, label_path in list(zip(dataset.inputs, dataset.labels or [], strict=False))[:limit]:
        yield read_pixels(path), read_pixels(label_path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.oracle",
        description="Reachability oracle (NOT the method): fit the daemon's enhancer to the synthetic "
        "generator's labels by plain supervision at each illumination scale, then score the fits "
        "with the project's evaluation on the synthetic benchmark (PSNR/SSIM against the label).",
        epilog="Figures, and the commands that made them: docs/results/oracle.md.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for oracle-sN/weights.safetensors, the benchmark, the evaluation and oracle.json",
    )
    parser.add_argument("--scales", default="1,2,4", help="comma-separated illumination scales (default 1,2,4)")
    parser.add_argument("--parts", type=int, default=16, help="training parts (own seed subset; default 16)")
    parser.add_argument("--train-size", default="1024x1024", help="WIDTHxHEIGHT of the training frames")
    parser.add_argument(
        "--net-pixels",
        type=int,
        default=128,
        help="side of the crop as the network sees it; the frame crop is this times the scale",
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="Adam learning rate, cosine-annealed over --iterations (2e-3 made s = 2 diverge)",
    )
    parser.add_argument("--iterations", type=int, default=250, help="iterations per scale at most")
    parser.add_argument("--minutes", type=float, default=7.0, help="wall-clock minutes per scale at most")
    parser.add_argument(
        "--bench", type=Path, default=None, help="benchmark folder (generated there if missing; default OUT/bench)"
    )
    parser.add_argument(
        "--pairs", type=int, default=50, help="benchmark pairs (the published synthetic benchmark's: 50)"
    )
    parser.add_argument("--size", default="1024x1024", help="benchmark WIDTHxHEIGHT (the published one's: 1024x1024)")
    parser.add_argument("--bench-seed", type=int, default=0, help="benchmark seed (the published one's: 0)")
    parser.add_argument(
        "--baselines", default="identity,gamma,clahe", help="classical methods evaluated beside the oracle rows"
    )
    parser.add_argument(
        "--no-fit", action="store_true", help="skip the fits: only the baselines and the ideal-map rows (no network)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the training parts and the fit")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        scales = [int(s) for s in args.scales.split(",") if s.strip()]
        train_size, bench_size = parse_size(args.train_size), parse_size(args.size)
    except ValueError as exc:
        print(f"trainer.oracle: {exc}", file=sys.stderr)
        return 2
    bad = [s for s in scales if s not in ALLOWED_SCALES]
    if bad or not scales:
        print(f"trainer.oracle: scales must be among {ALLOWED_SCALES}, got {args.scales!r}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    out = Path(args.out)
    base = OracleConfig(
        scale=scales[0],
        parts=args.parts,
        size=train_size,
        net_pixels=args.net_pixels,
        batch=args.batch,
        lr=args.lr,
        iterations=args.iterations,
        minutes=args.minutes,
        seed=args.seed,
    )
    fits = []
    inputs, targets = training_pairs(base, progress) if not args.no_fit else (np.zeros((0, 1, 1)),) * 2
    for scale in scales if not args.no_fit else []:
        cfg = OracleConfig(**{**asdict(base), "scale": scale, "size": train_size})
        fits.append(fit(cfg, inputs, targets, out / f"oracle-s{scale}" / "weights.safetensors", progress))
        print(
            f"oracle s={scale}: {fits[-1].iterations} iterations in {fits[-1].seconds:.0f} s, "
            f"training MSE {fits[-1].first_loss:.4g} -> {fits[-1].final_loss:.4g}",
            flush=True,
        )
    bench = benchmark_folder(args.bench or out / "bench", args.pairs, bench_size, args.bench_seed, progress)
    methods = [m for m in args.baselines.split(",") if m.strip()] + [f"net:{f.weights}" for f in fits]
    result = evaluate(bench, methods, out / "eval", device="cpu", progress=progress)
    ideal = ideal_map_scores(benchmark_pairs(bench), scales)
    print(f"REACHABILITY ORACLE ({ORACLE_NOTE}); net (oracle-sN) = illumination scale N")
    print(result.table)
    print(
        "Ideal illumination map (I / label, area-averaged to 1/s; no network): "
        + ", ".join(f"{k}: PSNR {v['psnr']:.2f} dB, SSIM {v['ssim']:.3f}" for k, v in ideal.items())
    )
    rows = {
        s.label: {"psnr": s.means["psnr"], "ssim": s.means["ssim"], "noise_gain": s.means["noise_gain"]}
        for s in result.summaries
    } | ideal
    record = {
        "note": ORACLE_NOTE,
        "bench": {"path": str(bench), "pairs": args.pairs, "size": args.size, "seed": args.bench_seed},
        "fits": [asdict(f) for f in fits],
        "config": {**asdict(base), "scale": scales},
        "rows": rows,
    }
    (out / "oracle.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {out / 'oracle.json'} and {result.table_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
