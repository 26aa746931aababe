"""The reachability oracle, an upper mark for the enhancer (its command line: :mod:`trainer.oracle`).

Not the method. The method never sees a label; this command does. It fits the daemon's
enhancer (:class:`drdaemon.model.network.Enhancer`, ``I / L``) to the synthetic generator's
fused labels with plain supervision (mean squared error of the output against the label,
both in [0, 1]) at each illumination scale asked for, exports each fit as ordinary weights
and scores them with the project's evaluation on the benchmark. Whatever an unsupervised
scheme reaches with this network at a given training budget, it should not expect to pass
the oracle at a larger one: the figures say how close ``I / L`` can get to the label.

Training pairs come from parts of their own seed subset (:data:`ORACLE_SET`), never from the
benchmark's test parts. The network sees ``--net-pixels`` square crops at its own
resolution: a crop of ``net_pixels * s`` frame pixels for illumination scale ``s`` (capped
at the frame), so every scale costs the same per sample and the coarse scales see nearly
whole frames, as they do at inference. The input is normalised with the daemon's own window
(:func:`drdaemon.kernels.window.frame_to_unit`), the target is ``label / 65535``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from drdaemon.io.weights import save_weights
from drdaemon.kernels.similarity import psnr, ssim
from drdaemon.kernels.window import U16_MAX, frame_to_unit, unit_to_u16
from drdaemon.model.network import (
    ALLOWED_SCALES,
    Enhancer,
    EnhancerSpec,
    apply_illumination,
    expand_illumination,
    shrink_for_illumination,
)
from drdaemon.physics import generate, generate_one
from trainer.shared.enhancer import start_near_identity

#: Seed subset of the oracle's training parts (the benchmark uses 0, the trainer's folders 1 and 2).
ORACLE_SET = 3
ORACLE_NOTE = "supervised oracle: fitted to the generator's labels, not the unsupervised method"


@dataclass(frozen=True)
class OracleConfig:
    """What one oracle fit trains on and for how long."""

    scale: int
    parts: int = 16
    size: tuple[int, int] = (1024, 1024)  # (height, width) of the training frames
    net_pixels: int = 128
    batch: int = 2
    lr: float = 1e-3
    iterations: int = 250
    minutes: float = 7.0  # wall-clock cap of the fit; whichever of the two comes first
    grad_clip: float = 1.0  # a large step can push the head's ReLU to 0 everywhere, where no gradient flows
    seed: int = 0


@dataclass
class OracleFit:
    scale: int
    iterations: int
    seconds: float
    first_loss: float
    final_loss: float
    weights: str
    weights_sha256: str


def training_pairs(cfg: OracleConfig, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each (N, H, W) float32 in [0, 1]: the daemon's window and the label."""
    height, width = cfg.size
    inputs, targets = [], []
    for index in tqdm(range(cfg.parts), desc="oracle data", unit="part", disable=not progress):
        abnormal, label, _, _ = generate_one(cfg.seed, ORACLE_SET, index, height, width)
        inputs.append(frame_to_unit(abnormal)[0])
        targets.append(label.astype(np.float32) / U16_MAX)
    return np.stack(inputs), np.stack(targets)


def sample_batch(
    inputs: np.ndarray, targets: np.ndarray, side: int, batch: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random aligned square crops of ``side`` frame pixels, with random flips; (B, 1, S, S) each."""
    _, height, width = inputs.shape
    side = min(side, height, width)
    xs, ys = [], []
    for _ in range(batch):
        k = int(rng.integers(0, inputs.shape[0]))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        x = inputs[k, top : top + side, left : left + side]
        y = targets[k, top : top + side, left : left + side]
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        if rng.random() < 0.5:
            x, y = x[::-1], y[::-1]
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(y))
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))[:, None]


def fit(cfg: OracleConfig, inputs: np.ndarray, targets: np.ndarray, out: Path, progress: bool = True) -> OracleFit:
    """Fit one enhancer at ``cfg.scale`` by supervision and export it to ``out``."""
    if cfg.scale not in ALLOWED_SCALES:
        raise ValueError(f"illumination scale must be one of {ALLOWED_SCALES}, got {cfg.scale}")
    torch.manual_seed(cfg.seed + cfg.scale)
    rng = np.random.default_rng([cfg.seed, cfg.scale])
    model = start_near_identity(Enhancer(EnhancerSpec(illumination_scale=cfg.scale)))
    optim = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=cfg.iterations)
    started = time.perf_counter()
    losses: list[float] = []
    bar = tqdm(total=cfg.iterations, desc=f"oracle s={cfg.scale}", unit="it", disable=not progress)
    for _ in range(cfg.iterations):
        x, y = sample_batch(inputs, targets, cfg.net_pixels * cfg.scale, cfg.batch, rng)
        loss = F.mse_loss(model(x), y)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optim.step()
        schedule.step()
        losses.append(float(loss.detach()))
        bar.update()
        bar.set_postfix(mse=f"{np.mean(losses[-20:]):.4g}")
        if time.perf_counter() - started > cfg.minutes * 60:
            break
    bar.close()
    seconds = time.perf_counter() - started
    provenance = {
        "trainer": "trainer.oracle",
        "note": ORACLE_NOTE,
        "config": asdict(cfg),
        "iterations": len(losses),
        "final_mse": float(np.mean(losses[-20:])),
    }
    sha256 = save_weights(out, model.eval(), provenance)
    return OracleFit(
        cfg.scale, len(losses), round(seconds, 1), losses[0], float(np.mean(losses[-20:])), str(out), sha256
    )


def ideal_map_scores(pairs: Iterable[tuple[np.ndarray, np.ndarray]], scales: list[int]) -> dict[str, dict[str, float]]:
    """PSNR/SSIM of ``I / L`` with the *ideal* map, ``I / label``, area-averaged to 1/s and expanded back.

    ``pairs``: (input frame, label) uint16 (H, W) each, e.g. the benchmark's. No network and no
    training: what the division by a map at 1/s can reach at all, so the gap between this row
    and a fitted row is the network's (and its budget's), not the form's.
    """
    scores: dict[int, list[tuple[float, float]]] = {s: [] for s in scales}
    for frame, label in pairs:
        x = torch.from_numpy(frame_to_unit(frame)[0])[None, None]
        ideal = x / torch.from_numpy(label.astype(np.float32) / U16_MAX).clamp(min=1.0 / U16_MAX)[None, None]
        for s in scales:
            smooth = ideal if s == 1 else expand_illumination(shrink_for_illumination(ideal, s), x.shape[-2:])
            out = unit_to_u16(apply_illumination(x, smooth)[0, 0].numpy())
            scores[s].append((psnr(label, out), ssim(label, out)))
    return {
        f"ideal map s={s}": {"psnr": float(np.mean([p for p, _ in v])), "ssim": float(np.mean([q for _, q in v]))}
        for s, v in scores.items()
        if v
    }


def benchmark_folder(root: Path, pairs: int, size: tuple[int, int], seed: int, progress: bool) -> Path:
    """The synthetic benchmark (docs/results/synthetic-benchmark.md) under ``root``, generated unless it is already there."""
    manifest = root / "synth.json"
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if (found["pairs"], found["height"], found["width"], found["seed"]) == (pairs, *size, seed):
            return root
    generate(root, pairs, 0, size, seed, progress=progress)
    return root
