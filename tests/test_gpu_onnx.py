"""The ONNX Runtime backend on CUDA and TensorRT (``-m gpu``); skipped where onnxruntime has no GPU provider.

Bounds in 16-bit output levels against the CPU provider's float32 output: the CUDA provider
(float32) RMS <= 1; TensorRT float16 RMS <= 16 (the PyTorch float16 bound); TensorRT INT8 from
a QDQ model RMS <= 64 (the INT8 bound on the CPU). ``tools/gpu-check`` runs this file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed")

from drdaemon.config import EngineConfig  # noqa: E402
from drdaemon.engines import build_engines  # noqa: E402
from drdaemon.io.onnx_model import export_onnx, quantize_onnx  # noqa: E402
from drdaemon.io.weights import load_weights  # noqa: E402
from tests.testkit import write_weights  # noqa: E402

PROVIDERS = ort.get_available_providers()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in PROVIDERS,
        reason=f"onnxruntime has no CUDA provider here ({', '.join(PROVIDERS)}): install onnxruntime-gpu on a GPU machine",
    ),
]
tensorrt = pytest.mark.skipif(
    "TensorrtExecutionProvider" not in PROVIDERS, reason="onnxruntime has no TensorRT provider"
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("onnx-gpu")
    write_weights(root / "w.safetensors", scale=4, provenance={"name": "gpu"})
    float_model = export_onnx(load_weights(root / "w.safetensors"), root / "w.onnx").path
    rng = np.random.default_rng(0)
    calibration = [rng.integers(500, 60000, (512, 512)).astype(np.uint16) for _ in range(2)]
    return float_model, quantize_onnx(float_model, root / "w-qdq.onnx", calibration, "qdq").path


def frame() -> np.ndarray:
    return np.random.default_rng(1).integers(500, 60000, (1031, 777)).astype(np.uint16)


def rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def run(model: Path, tmp_path: Path, device: str, **keys: object) -> tuple[np.ndarray, dict[str, object]]:
    config = EngineConfig(
        name="net",
        weights=model,
        devices=[device],
        workers_per_device=1,
        tensorrt_cache=tmp_path / ".tensorrt-cache",
        **keys,
    )
    result = build_engines(config)[0].enhance(frame())
    return result.pixels, result.parameters


def test_cuda_provider_matches_the_cpu_provider(models: tuple[Path, Path], tmp_path: Path) -> None:
    reference, _ = run(models[0], tmp_path, "cpu")
    pixels, parameters = run(models[0], tmp_path, "cuda:0", precision="float32")
    assert parameters["provider"] == "CUDAExecutionProvider" and parameters["device"] == "cuda:0"
    assert rms(reference, pixels) <= 1.0


@tensorrt
def test_tensorrt_float16_is_within_the_half_precision_bound_and_caches_its_engine(
    models: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    reference, _ = run(models[0], tmp_path, "cpu")
    pixels, parameters = run(models[0], tmp_path, "cuda:0", tensorrt=True, precision="float16")
    assert parameters["provider"] == "TensorrtExecutionProvider" and parameters["precision"] == "float16"
    assert rms(reference, pixels) <= 16
    assert any((tmp_path / ".tensorrt-cache").iterdir())


@tensorrt
def test_tensorrt_int8_from_the_qdq_model_is_within_the_int8_bound(models: tuple[Path, Path], tmp_path: Path) -> None:
    reference, _ = run(models[0], tmp_path, "cpu")
    pixels, parameters = run(models[1], tmp_path, "cuda:0", tensorrt=True, precision="float32")
    assert parameters["provider"] == "TensorrtExecutionProvider" and parameters["precision"] == "int8"
    assert rms(reference, pixels) <= 64
