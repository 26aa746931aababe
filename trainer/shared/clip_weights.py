"""Getting the frozen CLIP: its architecture, its weights (online or not), and where they came from.

Where the weights come from (``clip.weights``): a pretrained tag of open_clip (``openai``),
a file (OpenAI JIT archive, a plain or wrapped state dict, safetensors), ``local-dir:DIR``
(a folder holding an ``open_clip_config.json`` and/or a checkpoint), ``bundled`` (the weights
shipped with the package for one of its own model configs, e.g. ``radiograph-clip``), or
``none`` for random initialisation. The architecture (``clip.model``) is an open_clip model
name, the name of a model config shipped in ``trainer/model_configs/``, or the path of a
model-config JSON. Without network access the hub is put in offline mode, so a missing
checkpoint fails in seconds instead of retrying downloads. The views of the loaded model that
the losses use are in :mod:`trainer.clip.backbone`.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from drdaemon.io.durable import file_sha256

LOCAL_DIR = "local-dir:"
BUNDLED = "bundled"
#: The package's own CLIP model configs (NAME.json) and the weights shipped for some of them
#: (NAME.safetensors, with NAME.model_card.json), written by ``python -m trainer.bundle clip``.
BUNDLED_DIR = Path(__file__).parents[1] / "model_configs"
#: Checkpoint names looked for in a ``local-dir:`` folder, best first.
CHECKPOINT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
    "model.pt",
    "model.pth",
)
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
#: Keys of JIT archives that are not parameters of the open_clip model (attn_mask is rebuilt).
JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


class ClipUnavailable(Exception):
    """The CLIP model or its weights cannot be had; the message says what to do."""


@dataclass(frozen=True)
class ClipSource:
    """Where the frozen CLIP came from, as the model card records it."""

    model: str
    weights: str
    checkpoint: str | None
    checkpoint_sha256: str | None


def network_reachable(host: str, port: int = 443, timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def go_offline() -> None:
    """Make the Hugging Face hub answer from its cache only (read at call time by the hub)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def unavailable_message(model: str, weights: str, reason: str) -> str:
    return (
        f"CLIP weights {weights!r} for {model!r} cannot be had: {reason}\n"
        "Put a local checkpoint on this machine and point --clip-weights at it, for example:\n"
        "  --clip-weights /models/RN101.pt                 (OpenAI JIT archive or state dict)\n"
        "  --clip-weights /models/open_clip_model.safetensors\n"
        "  --clip-weights local-dir:/models/resnet101_clip.openai   (folder with open_clip_config.json "
        "and open_clip_pytorch_model.bin or *.safetensors)\n"
        "or copy the Hugging Face cache (~/.cache/huggingface/hub) from a machine with network access. "
        "--clip-weights none trains with a randomly initialised CLIP (tests and demos only)."
    )


def bundled_checkpoint(name: str) -> Path:
    return BUNDLED_DIR / f"{name}.safetensors"


def bundled_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.safetensors"))


def read_model_config(model: str) -> tuple[str, dict[str, Any]]:
    """The open_clip model config: a JSON file (plain or ``{"model_cfg": ...}``), a name shipped
    in :data:`BUNDLED_DIR`, or an open_clip built-in name."""
    import open_clip

    path = Path(model)
    if path.suffix != ".json" and not path.is_file() and (BUNDLED_DIR / f"{model}.json").is_file():
        path = BUNDLED_DIR / f"{model}.json"
    if path.suffix == ".json" or path.is_file():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ClipUnavailable(f"cannot read the CLIP model config {path}: {exc}") from exc
        return path.stem, dict(config.get("model_cfg", config))
    config = open_clip.get_model_config(model)
    if config is None:
        raise ClipUnavailable(
            f"unknown open_clip model {model!r}; give a model name such as "
            "RN101-quickgelu or the path of a model-config JSON"
        )
    return model, dict(config)


def refuse_non_resnet(name: str, config: dict[str, Any]) -> None:
    vision = config.get("vision_cfg", {})
    text = config.get("text_cfg", {})
    if "timm_model_name" in vision or not isinstance(vision.get("layers"), (list, tuple)):
        raise ClipUnavailable(
            f"CLIP model {name!r} has a non-ResNet visual tower; the feature-map losses need the "
            "levels 0..4 (stem, layer1..layer4) of a ModifiedResNet tower: use RN50, RN101 (-quickgelu) "
            "or a model config whose vision_cfg.layers is a list of four stage depths"
        )
    if "hf_model_name" in text or config.get("custom_text"):
        raise ClipUnavailable(
            f"CLIP model {name!r} has a custom text tower; the prompt learner needs CLIP's own text transformer"
        )


def find_local_checkpoint(folder: Path) -> Path | None:
    for name in CHECKPOINT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
    return found[0] if found else None


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    """A CLIP state dict from safetensors, a (wrapped) torch state dict or an OpenAI JIT archive."""
    path = Path(path)
    state: Any
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - not a plain pickle: try the TorchScript archive OpenAI ships
            try:
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
            except Exception as exc:
                raise ClipUnavailable(f"cannot read {path} as a state dict, safetensors or JIT archive: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ClipUnavailable(f"{path} does not hold a state dict")
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    return {k: v for k, v in state.items() if k not in JIT_EXTRA_KEYS}


def download_tag(name: str, tag: str, cache_dir: str | None) -> Path:
    """The cached or downloaded checkpoint of an open_clip pretrained tag; fails fast offline."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(name, tag)
    if not cfg:
        tags = list_pretrained_tags_by_model(name)
        raise ClipUnavailable(f"{tag!r} is neither a file nor a pretrained tag of {name!r} (tags: {tags or 'none'})")
    host = "huggingface.co" if cfg.get("hf_hub") else urlparse(cfg.get("url", "")).hostname or "huggingface.co"
    offline = not network_reachable(host)
    if offline:
        go_offline()
    try:
        target = download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as exc:
        reason = "no network and no cached copy" if offline else f"download failed: {exc}"
        raise ClipUnavailable(unavailable_message(name, tag, reason)) from exc
    if not target or not Path(target).is_file():
        raise ClipUnavailable(unavailable_message(name, tag, "no cached copy"))
    return Path(target)


def resolve_weights(
    name: str, config: dict[str, Any], weights: str, cache_dir: str | None
) -> tuple[dict[str, Any], Path | None]:
    """(model config, checkpoint path or None for random init) for a ``clip.weights`` value."""
    if weights == "none":
        return config, None
    if weights == BUNDLED:
        bundled = bundled_checkpoint(name)
        if not bundled.is_file():
            shipped = ", ".join(bundled_names()) or "none in this install"
            raise ClipUnavailable(
                f"no bundled CLIP weights for {name!r} (bundled: {shipped}); use --clip radiograph-clip "
                "--clip-weights bundled, or give a checkpoint file"
            )
        return config, bundled
    if weights.startswith(LOCAL_DIR):
        folder = Path(weights[len(LOCAL_DIR) :]).expanduser()
        if not folder.is_dir():
            raise ClipUnavailable(unavailable_message(name, weights, f"folder {folder} not found"))
        card = folder / "open_clip_config.json"
        if card.is_file():
            config = dict(json.loads(card.read_text(encoding="utf-8")).get("model_cfg", config))
        checkpoint = find_local_checkpoint(folder)
        if checkpoint is None:
            raise ClipUnavailable(unavailable_message(name, weights, f"no checkpoint file in {folder}"))
        return config, checkpoint
    path = Path(weights).expanduser()
    if path.is_file():
        return config, path
    if path.suffix in CHECKPOINT_SUFFIXES or os.sep in weights:
        raise ClipUnavailable(unavailable_message(name, weights, f"file {path} not found"))
    return config, download_tag(name, weights, cache_dir)


def build_clip(model: str, weights: str, cache_dir: str | None = None) -> tuple[nn.Module, ClipSource]:
    """The open_clip CLIP model with its weights loaded, on the CPU, and where it came from."""
    import open_clip

    name, config = read_model_config(model)
    config, checkpoint = resolve_weights(name, config, weights, cache_dir)
    refuse_non_resnet(name, config)
    config = {k: v for k, v in config.items() if k != "custom_text"}
    clip = open_clip.CLIP(**config)
    if checkpoint is not None:
        state = read_checkpoint(checkpoint)
        try:
            clip.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ClipUnavailable(f"{checkpoint} does not match CLIP model {name!r}: {exc}") from exc
    source = ClipSource(
        model=model,
        weights=weights,
        checkpoint=str(checkpoint) if checkpoint else None,
        checkpoint_sha256=file_sha256(checkpoint) if checkpoint else None,
    )
    return clip, source
