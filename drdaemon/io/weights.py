"""Enhancer weights on disk: safetensors with the architecture in the metadata.

safetensors cannot execute code on load, which matters for a file copied onto a production
station. The file is written canonically (header keys sorted), so the same weights and
provenance always give the same bytes and ``engine.weights_sha256`` names a model, not a
particular export of it: the safetensors library itself writes its metadata in an order
that changes from process to process. Pickle-based checkpoints (``.pt``/``.pth``) are refused unless the caller allows
them explicitly, and even then are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from drdaemon.io.durable import file_sha256
from drdaemon.model.network import Enhancer, EnhancerSpec, upgrade_state_dict

FORMAT_VERSION = "1"


class WeightsError(Exception):
    """Weights that cannot be loaded; the message says what to do."""


@dataclass(frozen=True)
class LoadedWeights:
    model: Enhancer
    sha256: str
    path: Path
    #: Free-form provenance written by the trainer (run id, data hash, CLIP model, ...).
    provenance: dict[str, object] = field(default_factory=dict)
    #: sha256 of the provenance record as stored: names the training run in every sidecar.
    provenance_sha256: str = ""

    @property
    def name(self) -> str:
        """The model card's name (shipped weights carry one), else the file's stem."""
        return str(self.provenance.get("name") or self.path.stem)

    @property
    def training_scheme(self) -> str | None:
        """How the trainer learned these weights (``clip``, ``cyclegan``), ``None`` when unknown.

        The trainer records ``scheme`` in the provenance; weights exported before it did came
        from the CLIP scheme, the only one then, and name their CLIP model instead.
        """
        scheme = self.provenance.get("scheme")
        if isinstance(scheme, str):
            return scheme
        return "clip" if "clip_model" in self.provenance else None


def save_weights(path: Path, model: Enhancer, provenance: dict[str, object] | None = None) -> str:
    """Write ``model`` as safetensors with its spec and provenance; returns the file's sha256."""
    spec = model.spec
    record = json.dumps(provenance or {}, sort_keys=True, default=str)
    metadata = {
        "format_version": FORMAT_VERSION,
        "architecture": spec.architecture,
        "in_ch": str(spec.in_ch),
        "illumination_scale": str(spec.illumination_scale),
        "provenance": record,
        "provenance_sha256": _text_sha256(record),
    }
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(canonical_safetensors(save(tensors, metadata=metadata)))
    return file_sha256(path)


def canonical_safetensors(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted (tensor data unchanged).

    Layout: 8 bytes little-endian header length, the JSON header padded with spaces to a
    multiple of 8, then the tensor data, whose offsets count from the data's start.
    """
    length = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + length :]


def load_weights(path: Path, allow_pickle: bool = False) -> LoadedWeights:
    """Build an :class:`Enhancer` from a weights file, refusing pickles unless allowed."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        state, metadata = _read_safetensors(path)
    elif allow_pickle:
        state, metadata = _read_pickle(path)
    else:
        raise WeightsError(
            f"{path.name} is not a .safetensors file; pickle checkpoints can run code when loaded "
            "and are refused. Export with `python -m trainer` or set engine.allow_pickle = true "
            "to read it with torch.load(weights_only=True)."
        )
    try:
        spec = EnhancerSpec(
            in_ch=int(metadata.get("in_ch", 1)),
            illumination_scale=int(metadata.get("illumination_scale", 1)),
            architecture=metadata.get("architecture", EnhancerSpec.architecture),
        )
    except ValueError as exc:
        raise WeightsError(f"{path.name}: bad metadata: {exc}") from exc
    if spec.architecture != EnhancerSpec.architecture:
        raise WeightsError(
            f"{path.name} holds architecture {spec.architecture!r}, this drdaemon runs {EnhancerSpec.architecture!r}"
        )
    model = Enhancer(spec)
    try:
        model.load_state_dict(upgrade_state_dict(state))
    except RuntimeError as exc:
        raise WeightsError(f"{path.name} does not match the enhancer: {exc}") from exc
    record = metadata.get("provenance", "{}")
    record_sha256 = _text_sha256(record)
    if metadata.get("provenance_sha256", record_sha256) != record_sha256:
        raise WeightsError(
            f"{path.name}: the provenance record does not match its provenance_sha256 "
            "(the metadata was edited after export)"
        )
    return LoadedWeights(
        model=model.eval(),
        sha256=file_sha256(path),
        path=path,
        provenance=json.loads(record),
        provenance_sha256=record_sha256,
    )


def _text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
        return load_file(str(path)), metadata
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"cannot read {path.name} as safetensors: {exc}") from exc


def _read_pickle(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated classes for bad files
        raise WeightsError(f"cannot read {path.name} with torch.load(weights_only=True): {exc}") from exc
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        metadata = {k: str(v) for k, v in checkpoint.get("metadata", {}).items()}
        return checkpoint["state_dict"], metadata
    return checkpoint, {}
