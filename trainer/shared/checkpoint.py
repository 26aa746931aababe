"""The training checkpoint: writing it atomically, reading it back checked, and the RNG states in it.

A checkpoint holds everything an exact resume needs (see :mod:`trainer.clip.scheme`); the RNG
states of Python, numpy, torch and CUDA are stored as tensors so that ``torch.load`` with
``weights_only=True`` can read them.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from trainer.shared.errors import TrainerError

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def rng_state() -> dict[str, Any]:
    numpy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    kind, keys, pos, has_gauss, cached = numpy_state
    state = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def write_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Save ``state`` (with the format number) so that a crash mid-write leaves the last good checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"format": CHECKPOINT_FORMAT, **state}, partial)
    os.replace(partial, path)
    return path


def read_checkpoint(path: Path, clip_identity: dict[str, Any] | None, scheme: str = "clip") -> dict[str, Any]:
    """The state saved at ``path``, refused when its format, scheme or frozen CLIP differ from this run's.

    A checkpoint without a ``scheme`` key was written by the CLIP scheme, the only one then.
    """
    if not path.is_file():
        raise TrainerError(f"--resume: no checkpoint at {path}")
    # On the CPU first: the numpy RNG keys must stay host tensors; load_state_dict moves
    # the weights and optimiser state to their parameters' device.
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise TrainerError(f"{path}: checkpoint format {state.get('format')} is not {CHECKPOINT_FORMAT}")
    if state.get("scheme", "clip") != scheme:
        raise TrainerError(f"{path} was written by the {state.get('scheme', 'clip')} scheme, this run is {scheme}")
    if state["clip"] != clip_identity:
        raise TrainerError(f"{path} was trained with CLIP {state['clip']}, this run has {clip_identity}")
    return state
