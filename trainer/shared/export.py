"""The training result on disk: safetensors weights the daemon loads, and a model card JSON.

The card records what is needed to tell two weight files apart and to reproduce one: the
training scheme, the data folders (file counts, a hash of the file list), the full training
config, the CLIP model and the hash of its checkpoint (CLIP scheme), the final losses, the
library versions and the run's duration. A short provenance summary, the scheme included,
also goes into the weights file's own metadata, which the daemon's sidecar reports.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from drdaemon.io.weights import save_weights
from drdaemon.model.network import Enhancer
from trainer.shared.clip_weights import ClipSource

#: ``provenance["trainer"]`` of each scheme: how the weights were learned, in words.
SCHEME_TRAINERS = {"clip": "trainer (CLIP + CLAHE prior)", "cyclegan": "trainer (CycleGAN, forward generator)"}


def card_path(weights_path: Path) -> Path:
    """``weights.safetensors`` -> ``weights.model_card.json`` beside it."""
    return weights_path.with_name(weights_path.stem + ".model_card.json")


def write_card(path: Path, card: dict[str, Any]) -> Path:
    """A model card as the project writes them: indented JSON, keys sorted."""
    path.write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("drdaemon", "torch", "open_clip_torch", "numpy", "opencv-python-headless", "safetensors"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def export_weights(
    out: Path,
    enhancer: Enhancer,
    *,
    config: dict[str, Any],
    data: dict[str, dict[str, Any]],
    clip: ClipSource | None,
    final_losses: dict[str, float],
    iterations: int,
    duration_s: float,
    extra: dict[str, Any] | None = None,
    scheme: str = "clip",
) -> tuple[str, Path]:
    """Write the weights and the model card; returns (weights sha256, card path)."""
    clip_provenance = (
        {}
        if clip is None
        else {"clip_model": clip.model, "clip_weights": clip.weights, "clip_checkpoint_sha256": clip.checkpoint_sha256}
    )
    provenance: dict[str, object] = {
        "trainer": SCHEME_TRAINERS[scheme],
        "scheme": scheme,
        **clip_provenance,
        "data": {role: {k: v for k, v in summary.items() if k != "path"} for role, summary in data.items()},
        "iterations": iterations,
    }
    sha256 = save_weights(out, enhancer.cpu(), provenance)
    card = {
        "weights": {"path": str(Path(out).resolve()), "sha256": sha256, "spec": enhancer.spec.as_dict()},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "scheme": scheme,
        "data": data,
        "clip": None if clip is None else asdict(clip),
        "config": config,
        "iterations": iterations,
        "final_losses": final_losses,
        "duration_s": round(duration_s, 3),
        "versions": package_versions(),
        **(extra or {}),
    }
    return sha256, write_card(card_path(Path(out)), card)
