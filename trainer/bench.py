"""``python -m trainer.bench``: time the training steps and project the full schedule.

Runs the prompt-initialisation step and the enhancer step (with L_CLIP) for ``--iters``
iterations each on synthetic 16-bit frames, at the configured batch sizes and crop size,
data loading included, and multiplies the measured seconds per iteration by the number of
prompt and enhancer iterations in the schedule. Random CLIP weights (the default here) time
the same as pretrained ones, so no download is needed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from trainer.clip.scheme import Trainer
from trainer.shared.config import TrainConfig, load_config, override
from trainer.shared.schedule import PhaseKind, phase_at


def write_synthetic_frames(folder: Path, count: int, size: int, seed: int, level: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        frame = rng.normal(level * 65535, 2000, (size, size)).clip(0, 65535).astype(np.uint16)
        tifffile.imwrite(folder / f"bench_{i:03d}.tif", frame)
    return folder


def schedule_counts(cfg: TrainConfig) -> dict[str, int]:
    """Prompt and enhancer iterations of the configured schedule (its full length)."""
    counts = {"prompt": 0, "enhancer": 0}
    iteration, total = 0, cfg.schedule.total_iters
    while iteration < total:
        phase = phase_at(iteration, cfg.schedule)
        counts["prompt" if phase.trains_prompts else "enhancer"] += phase.end - phase.start
        iteration = phase.end
    return counts


def seconds_per_iteration(trainer: Trainer, start: int, iters: int, warmup: int) -> float:
    phase = phase_at(start, trainer.cfg.schedule)

    def sync() -> None:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)

    began = time.perf_counter()
    for n, batch in enumerate(trainer._loader(start, start + warmup + iters)):
        if n == warmup:
            sync()
            began = time.perf_counter()
        trainer.step(phase, batch)
    sync()
    return (time.perf_counter() - began) / iters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="training config TOML (batches, crop, schedule)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--clip", default="RN101-quickgelu", help="open_clip model name or model-config JSON")
    parser.add_argument("--clip-weights", default="none", help="CLIP weights (default none: random, same speed)")
    parser.add_argument("--iters", type=int, default=1000, help="timed iterations per step kind (default 1000)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations first (default 10)")
    parser.add_argument("--frame-size", type=int, default=2048, help="side of the synthetic frames (default 2048)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp:
        root = Path(tmp)
        n = args.iters + args.warmup
        base = [
            *args.overrides,
            override("clip.model", args.clip),
            override("clip.weights", args.clip_weights),
            override("run.progress", False),
            override("run.run_dir", str(root / "run")),
        ]
        projected_cfg = load_config(args.config, base)
        cfg = load_config(
            args.config,
            [
                *base,
                f"schedule.prompt_init_iters={n}",
                "schedule.warmup_iters=0",
                f"schedule.enhancer_iters={n}",
                f"schedule.total_iters={2 * n + 1}",
            ],
        )
        abnormal = write_synthetic_frames(root / "abnormal", 8, args.frame_size, 1, 0.05)
        normal = write_synthetic_frames(root / "normal", 8, args.frame_size, 2, 0.5)
        trainer = Trainer(cfg, abnormal, normal, root / "bench.safetensors")
        assert phase_at(n, cfg.schedule).kind is PhaseKind.ENHANCE
        prompt_s = seconds_per_iteration(trainer, 0, args.iters, args.warmup)
        enhancer_s = seconds_per_iteration(trainer, n, args.iters, args.warmup)
    counts = schedule_counts(projected_cfg)
    projected = counts["prompt"] * prompt_s + counts["enhancer"] * enhancer_s
    report = {
        "device": str(trainer.device),
        "device_name": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu",
        "clip": args.clip,
        "precision": str(trainer.amp_dtype or torch.float32),
        "crop_size": cfg.data.crop_size,
        "prompt_batch": cfg.optim.prompt_batch,
        "enhancer_batch": cfg.optim.enhancer_batch,
        "timed_iters": args.iters,
        "prompt_s_per_iter": round(prompt_s, 4),
        "enhancer_s_per_iter": round(enhancer_s, 4),
        "schedule_iters": counts,
        "projected_schedule_hours": round(projected / 3600, 2),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
