"""The enhancer as an ONNX model: export, static INT8 quantisation, and the checks at load.

``drdaemon export-onnx`` traces :class:`drdaemon.model.portable.PortableEnhancer` (the
whole-frame network with dynamic height and width) and records in the model's metadata
everything a runtime needs to use it the way the daemon does:

* the network's input: ``gray``, float32 ``(N, 1, H, W)``, the frame mapped through its
  percentile window (``low_percentile`` / ``high_percentile``, measured on a strided sample)
  to ``(x - low) / (high - low)`` clipped to [0, 1];
* its output: ``enhanced``, the same shape in [0, 1], written as ``round(y * 65535)``;
* ``illumination_scale``, ``in_ch``, ``architecture``;
* the source weights' sha256, their provenance sha256, their model card name and training
  scheme, and the model's own precision (``float32`` or ``int8``) and quantisation format.

Onnx and onnxruntime are imported here only (the ``onnx`` extra), never by the classical daemon.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from drdaemon.defaults import HIGH_PERCENTILE, LOW_PERCENTILE
from drdaemon.io.durable import file_sha256
from drdaemon.io.weights import LoadedWeights, WeightsError
from drdaemon.kernels.window import frame_to_unit
from drdaemon.model.network import EnhancerSpec

#: Marks a model written by ``drdaemon export-onnx`` (metadata key ``drdaemon_format``).
ONNX_FORMAT = "drdaemon-onnx-1"
INPUT_NAME = "gray"
OUTPUT_NAME = "enhanced"
OPSET = 18
#: What the metadata says about the input and output, for a person reading it with any ONNX tool.
INPUT_DOC = (
    "float32 (N, 1, H, W): the 16-bit frame through its percentile window "
    "[low_percentile, high_percentile] (on a strided sample of about 2^20 pixels), "
    "(x - low) / (high - low) clipped to [0, 1]"
)
OUTPUT_DOC = "float32 (N, 1, H, W) in [0, 1]; the 16-bit output is round(y * 65535)"
#: Side of the network's input per calibration crop (the crop itself is this times the
#: illumination scale): calibration keeps every intermediate map, so whole frames would
#: take gigabytes; crops keep the detector's pixel scale, which the convolutions see.
CALIBRATION_NETWORK_SIDE = 256
#: Crops taken per calibration frame, spread over it.
CALIBRATION_CROPS_PER_FRAME = 4

QuantFormat = Literal["qdq", "qoperator"]
QUANT_FORMATS: tuple[QuantFormat, ...] = ("qdq", "qoperator")


def require_onnx() -> None:
    """Raise a :class:`WeightsError` naming the extra when onnx or onnxruntime is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise WeightsError(
            f"ONNX models need the onnx extra ({exc.name} is not installed): pip install 'drdaemon[onnx]'"
        ) from exc


@dataclass(frozen=True)
class OnnxModelInfo:
    """What an exported model's metadata says, checked at load."""

    path: Path
    sha256: str
    spec: EnhancerSpec
    #: ``float32`` or ``int8`` (the model's own arithmetic).
    precision: str
    #: ``none`` for float32, else the quantisation format (``qdq`` or ``qoperator``).
    quantization: str
    low_percentile: float
    high_percentile: float
    source_weights_sha256: str
    provenance_sha256: str
    weights_name: str
    training_scheme: str | None


def metadata_for(loaded: LoadedWeights, precision: str = "float32", quantization: str = "none") -> dict[str, str]:
    spec = loaded.model.spec
    return {
        "drdaemon_format": ONNX_FORMAT,
        "architecture": spec.architecture,
        "in_ch": str(spec.in_ch),
        "illumination_scale": str(spec.illumination_scale),
        "low_percentile": str(LOW_PERCENTILE),
        "high_percentile": str(HIGH_PERCENTILE),
        "input": INPUT_DOC,
        "output": OUTPUT_DOC,
        "precision": precision,
        "quantization": quantization,
        "weights_sha256": loaded.sha256,
        "weights_provenance_sha256": loaded.provenance_sha256,
        "weights_name": loaded.name,
        "training_scheme": loaded.training_scheme or "",
    }


def export_onnx(loaded: LoadedWeights, out: Path) -> OnnxModelInfo:
    """Write the whole-frame network of ``loaded`` as a float32 ONNX model with dynamic H and W."""
    require_onnx()
    import onnx
    import torch

    from drdaemon.model.portable import PortableEnhancer

    portable = PortableEnhancer(loaded.model).eval()
    example = torch.rand(1, 1, 67, 93)
    height, width = torch.export.Dim("height", min=2), torch.export.Dim("width", min=2)
    with tempfile.TemporaryDirectory() as tmp:
        traced = Path(tmp) / "enhancer.onnx"
        torch.onnx.export(
            portable,
            (example,),
            str(traced),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"gray": {2: height, 3: width}},
            dynamo=True,
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
        model = onnx.load(str(traced))
    model.doc_string = f"drdaemon enhancer {loaded.name} ({loaded.model.spec.architecture})"
    _set_metadata(model, metadata_for(loaded))
    _save(model, out)
    return read_onnx_model(out)


def _set_metadata(model: Any, metadata: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key in sorted(metadata):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, metadata[key]


def _save(model: Any, out: Path) -> None:
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    onnx.save(model, buffer)
    out.write_bytes(buffer.getvalue())


def calibration_crops(frames: Sequence[np.ndarray], illumination_scale: int) -> Iterator[np.ndarray]:
    """Windowed ``(1, 1, h, w)`` float32 crops of the calibration frames (whole-frame windows)."""
    side = CALIBRATION_NETWORK_SIDE * illumination_scale
    for frame in frames:
        unit, _ = frame_to_unit(frame)
        height, width = unit.shape
        h, w = min(side, height), min(side, width)
        rows = np.linspace(0, height - h, CALIBRATION_CROPS_PER_FRAME).round().astype(int)
        cols = np.linspace(0, width - w, CALIBRATION_CROPS_PER_FRAME).round().astype(int)
        for top, left in zip(rows, cols, strict=True):
            yield np.ascontiguousarray(unit[top : top + h, left : left + w])[None, None]


def quantize_onnx(
    float_model: Path, out: Path, frames: Sequence[np.ndarray], quant_format: QuantFormat = "qdq"
) -> OnnxModelInfo:
    """Statically quantise an exported float32 model to INT8, calibrated on ``frames``.

    Weights per output channel (signed 8-bit), activations unsigned 8-bit, MinMax ranges over
    crops of the calibration frames (:func:`calibration_crops`). The illumination head (the
    last convolution) stays float32: a step of L near 1 is a step of the output, and the
    division after it runs in float32 anyway.
    """
    require_onnx()
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = read_onnx_model(float_model)
    if source.precision != "float32":
        raise WeightsError(
            f"{Path(float_model).name} is already quantised ({source.precision}); quantise the float32 export"
        )
    if not frames:
        raise WeightsError("quantisation needs at least one calibration frame (--calibration FRAME...)")
    crops = list(calibration_crops(frames, source.spec.illumination_scale))

    class Crops(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._items = iter(crops)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            return None if item is None else {INPUT_NAME: item}

    model = onnx.load(str(float_model))
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_model), str(prepared), skip_symbolic_shape=True)
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(quantized),
            Crops(),
            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=convs[-1:],
        )
        result = onnx.load(str(quantized))
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    metadata.update(precision="int8", quantization=quant_format, calibration_frames=str(len(frames)))
    result.doc_string = model.doc_string + f", INT8 ({quant_format}, {len(frames)} calibration frames)"
    _set_metadata(result, metadata)
    _save(result, out)
    return read_onnx_model(out)


def read_onnx_model(path: Path) -> OnnxModelInfo:
    """Check that ``path`` is an enhancer exported by drdaemon and read its metadata.

    Raises :class:`WeightsError` naming the problem: not a file, not ONNX, not drdaemon's
    export, another architecture, inputs or outputs that are not the enhancer's.
    """
    require_onnx()
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, OSError, ValueError) as exc:
        raise WeightsError(
            f"cannot read {path.name} as an ONNX model ({type(exc).__name__}: {exc}); "
            "export it again with `drdaemon export-onnx WEIGHTS --out MODEL.onnx`"
        ) from exc
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    if metadata.get("drdaemon_format") != ONNX_FORMAT:
        raise WeightsError(
            f"{path.name} is an ONNX model but not an enhancer exported by drdaemon (metadata drdaemon_format "
            f"is {metadata.get('drdaemon_format')!r}, expected {ONNX_FORMAT!r}); export the weights with "
            "`drdaemon export-onnx WEIGHTS --out MODEL.onnx`"
        )
    inputs = [(i.name, _rank(i)) for i in model.graph.input]
    outputs = [(o.name, _rank(o)) for o in model.graph.output]
    if inputs != [(INPUT_NAME, 4)] or outputs != [(OUTPUT_NAME, 4)]:
        raise WeightsError(
            f"{path.name} does not match the enhancer: inputs {inputs} and outputs {outputs}, expected "
            f"[({INPUT_NAME!r}, 4)] and [({OUTPUT_NAME!r}, 4)]; export it again with `drdaemon export-onnx`"
        )
    try:
        spec = EnhancerSpec(
            in_ch=int(metadata["in_ch"]),
            illumination_scale=int(metadata["illumination_scale"]),
            architecture=metadata["architecture"],
        )
        low, high = float(metadata["low_percentile"]), float(metadata["high_percentile"])
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"{path.name}: bad metadata: {type(exc).__name__}: {exc}") from exc
    if spec.architecture != EnhancerSpec.architecture:
        raise WeightsError(
            f"{path.name} holds architecture {spec.architecture!r}, this drdaemon runs {EnhancerSpec.architecture!r}"
        )
    return OnnxModelInfo(
        path=path,
        sha256=file_sha256(path),
        spec=spec,
        precision=metadata.get("precision", "float32"),
        quantization=metadata.get("quantization", "none"),
        low_percentile=low,
        high_percentile=high,
        source_weights_sha256=metadata.get("weights_sha256", ""),
        provenance_sha256=metadata.get("weights_provenance_sha256", ""),
        weights_name=metadata.get("weights_name", path.stem),
        training_scheme=metadata.get("training_scheme") or None,
    )


def _rank(value: Any) -> int:
    return len(value.type.tensor_type.shape.dim)


def describe(info: OnnxModelInfo) -> str:
    """One line for the CLI: what was written."""
    return json.dumps(
        {
            "path": str(info.path),
            "sha256": info.sha256,
            "precision": info.precision,
            "quantization": info.quantization,
            "illumination_scale": info.spec.illumination_scale,
            "weights_sha256": info.source_weights_sha256,
            "weights_name": info.weights_name,
        }
    )


__all__ = [
    "ONNX_FORMAT",
    "QUANT_FORMATS",
    "OnnxModelInfo",
    "calibration_crops",
    "describe",
    "export_onnx",
    "quantize_onnx",
    "read_onnx_model",
    "require_onnx",
]
