"""``python -m trainer.bundle``: put trained weights into the package, each with its model card.

Two kinds of file ship with drdaemon, so that a fresh install works offline:

* the enhancer the daemon runs when ``engine.name = "net"`` has no ``engine.weights``
  (``drdaemon/io/shipped/enhancer.safetensors``); its provenance gets the card's ``name``,
  which every sidecar then records (``engine.parameters.weights_name``);
* the radiograph CLIP the trainer loads with ``--clip radiograph-clip --clip-weights bundled``
  (``trainer/model_configs/radiograph-clip.safetensors``), stored in float16 to halve its size
  (loaded into the float32 model, a relative change of about 1e-3 per weight).

The card beside each is the training run's own card plus where the shipped file came from.
This is a maintainer's tool: it writes into the source tree the package is installed from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from drdaemon.defaults import SHIPPED_WEIGHTS
from drdaemon.io.durable import file_sha256
from drdaemon.io.weights import WeightsError, canonical_safetensors, load_weights, save_weights
from trainer.shared.clip_weights import BUNDLED_DIR, bundled_checkpoint
from trainer.shared.export import card_path, write_card


def read_card(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else {}


def bundle_enhancer(source: Path, name: str, dest: Path = SHIPPED_WEIGHTS) -> tuple[Path, str, Path]:
    """Copy ``source`` to ``dest`` with ``name`` in its provenance; returns (file, sha256, card)."""
    loaded = load_weights(source)
    provenance = {**loaded.provenance, "name": name, "source_sha256": loaded.sha256}
    dest.parent.mkdir(parents=True, exist_ok=True)
    sha256 = save_weights(dest, loaded.model, provenance)
    card = read_card(card_path(source))
    card["name"] = name
    card["weights"] = {**card.get("weights", {}), "path": dest.name, "sha256": sha256}
    card["shipped_from"] = {"path": str(source), "sha256": loaded.sha256}
    return dest, sha256, write_card(card_path(dest), card)


def bundle_clip(run_dir: Path, name: str = "radiograph-clip") -> tuple[Path, str, Path]:
    """The pretraining run's checkpoint as the float16 bundled weights of model config ``name``."""
    from safetensors.torch import load_file, save

    source = run_dir / "open_clip_model.safetensors"
    if not source.is_file():
        raise FileNotFoundError(f"no {source.name} in {run_dir} (a python -m trainer.pretrain_clip --out folder)")
    state = load_file(str(source))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sorted(state.items())}
    dest = bundled_checkpoint(name)
    dest.write_bytes(canonical_safetensors(save(half)))
    sha256 = file_sha256(dest)
    card = read_card(run_dir / "model_card.json")
    card["name"] = name
    card["weights"] = {
        "path": dest.name,
        "sha256": sha256,
        "format": "open_clip state dict, float16 (judged in float32 before bundling)",
    }
    card["bundled_from"] = {"path": str(source), "sha256": file_sha256(source)}
    card["use"] = f"python -m trainer --clip {name} --clip-weights bundled ..."
    return dest, sha256, write_card(card_path(dest), card)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.bundle",
        description="Ship trained weights with the package: the daemon's default enhancer or the radiograph CLIP.",
    )
    kinds = parser.add_subparsers(dest="kind", required=True)
    enhancer = kinds.add_parser(
        "enhancer",
        help=f"weights the net engine runs without engine.weights (drdaemon/io/shipped/{SHIPPED_WEIGHTS.name})",
    )
    enhancer.add_argument("weights", type=Path, help="a trainer's .safetensors (its model card beside it is copied)")
    enhancer.add_argument("--name", required=True, help="the model card's name, recorded in every sidecar")
    clip = kinds.add_parser(
        "clip", help=f"a radiograph CLIP for --clip-weights bundled (into trainer/{BUNDLED_DIR.name}/)"
    )
    clip.add_argument("run_dir", type=Path, help="a python -m trainer.pretrain_clip --out folder")
    clip.add_argument("--name", default="radiograph-clip", help="its model config's name (default radiograph-clip)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.kind == "enhancer":
            dest, sha256, card = bundle_enhancer(args.weights, args.name)
        else:
            dest, sha256, card = bundle_clip(args.run_dir, args.name)
    except (FileNotFoundError, WeightsError, OSError, ValueError) as exc:
        print(f"trainer.bundle: {exc}", file=sys.stderr)
        return 2
    print(f"shipped {dest} (sha256 {sha256}); model card {card}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    raise SystemExit(main())
