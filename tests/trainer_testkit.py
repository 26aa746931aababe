"""Shared pieces of the trainer tests: a tiny random CLIP config, synthetic frames, a tiny schedule."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from trainer.shared.config import TrainConfig, load_config

#: A randomly initialised open_clip ResNet CLIP small enough to train on a CPU in seconds.
TINY_CLIP = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_tiny_clip_config(folder: Path) -> Path:
    path = folder / "tiny-rn.json"
    path.write_text(json.dumps(TINY_CLIP), encoding="utf-8")
    return path


def write_frames(
    folder: Path, count: int, level: float, spread: float, seed: int, shape: tuple[int, int] = (72, 96)
) -> Path:
    """16-bit frames: a smooth part-like pattern around ``level`` (0..1 of full scale) plus noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    for i in range(count):
        pattern = np.sin(x / (5 + i) + i) * np.cos(y / (7 + i))
        values = (level + spread * pattern) * 65535 + rng.normal(0, 200, shape)
        tifffile.imwrite(folder / f"frame_{i:02d}.tif", values.clip(0, 65535).astype(np.uint16))
    return folder


def make_data(root: Path) -> tuple[Path, Path]:
    """Dark, low-contrast 'abnormal' frames and bright, contrasty 'normal' frames."""
    return (
        write_frames(root / "abnormal", 3, level=0.05, spread=0.02, seed=1),
        write_frames(root / "normal", 3, level=0.5, spread=0.35, seed=2),
    )


#: ``--set`` values of a test run: the CPU in float32, deterministic, no progress bar, no
#: checkpoint or preview before the end.
QUIET_CPU_RUN = (
    'run.device="cpu"',
    'run.precision="fp32"',
    "run.deterministic=true",
    "run.progress=false",
    "run.checkpoint_every=1000",
    "run.preview_every=1000",
)


def tiny_overrides(clip_json: Path, run_dir: Path, **schedule: int) -> list[str]:
    """``--set`` values: every phase a few iterations long, small crops, batch 4, no worker processes."""
    lengths = {
        "total_iters": 14,
        "prompt_init_iters": 3,
        "warmup_iters": 2,
        "enhancer_iters": 3,
        "prompt_round_iters": 1,
        "enhancer_round_iters": 2,
    } | schedule
    overrides = [f"schedule.{k}={v}" for k, v in lengths.items()] + [
        f'clip.model="{clip_json}"',
        'clip.weights="none"',
        f'run.run_dir="{run_dir}"',
        "data.crop_size=48",
        "data.workers=0",
        "optim.prompt_batch=4",
        "optim.enhancer_batch=4",
        "optim.prompt_lr=1e-2",
        "optim.enhancer_lr=1e-3",
        *QUIET_CPU_RUN,
    ]
    return overrides


def tiny_config(clip_json: Path, run_dir: Path, **schedule: int) -> TrainConfig:
    return load_config(None, tiny_overrides(clip_json, run_dir, **schedule))


def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy CI runner their spin-waiting
    makes a run several times slower; restore the caller's setting afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def trainer_command(
    abnormal: Path | str, normal: Path | str, out: Path | str, *args: str, processes: int = 1
) -> list[str]:
    """The command line of ``python -m trainer`` on the two frame folders, writing ``out``, then ``args``;
    with ``processes`` > 1 it runs under ``torch.distributed.run`` (one node, that many processes)."""
    torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    folders = ["--abnormal", str(abnormal), "--normal", str(normal), "--out", str(out)]
    return [sys.executable, *torchrun, "-m", "trainer", *folders, *args]
