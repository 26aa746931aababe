"""The learned engine, the daemon and the trainer on CUDA (``-m gpu``); skipped where no GPU is visible.

Error bounds in 16-bit output levels (issue 10): float16 against float32 RMS <= 16 and max
<= 128; bfloat16 RMS <= 40; the exact tiler against the whole frame within the same bounds
in each precision. ``tools/gpu-check`` runs this file first on a lent GPU machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from numpy.typing import NDArray

from drdaemon.engines.net import NetEngine, prepare_runtime
from drdaemon.errors import FrameError, Reason
from drdaemon.model.network import Enhancer
from drdaemon.model.tiling import TileSize
from tests.testkit import REPO, lit_enhancer, net_engine, run_daemon_on, write_config, write_weights

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="CUDA is not visible (no GPU, driver or CUDA build of torch): run on a GPU machine",
    ),
]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two visible CUDA devices")

#: (RMS, max) bound in output levels against float32, per precision; None: no bound on the maximum.
BOUNDS = {"float32": (1.0, 8.0), "float16": (16.0, 128.0), "bfloat16": (40.0, None)}
CUDA0 = torch.device("cuda", 0)


def dr_frame(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    from drdaemon.bench.cli import synthetic_frame

    return synthetic_frame(*shape, seed=seed)


def errors(reference: np.ndarray, pixels: np.ndarray) -> tuple[float, float]:
    diff = reference.astype(np.float64) - pixels.astype(np.float64)
    return float(np.sqrt(np.mean(diff**2))), float(np.abs(diff).max())


def assert_within(reference: np.ndarray, pixels: np.ndarray, precision: str) -> None:
    rms, worst = errors(reference, pixels)
    rms_bound, max_bound = BOUNDS[precision]
    assert rms <= rms_bound, f"{precision}: RMS {rms:.2f} levels > {rms_bound}"
    if max_bound is not None:
        assert worst <= max_bound, f"{precision}: max {worst:.0f} levels > {max_bound}"


def engine_on(
    device: torch.device,
    precision: str,
    net: Enhancer | None = None,
    budget_mb: int = 6144,
    compile_model: bool = False,
) -> NetEngine:
    runtime = prepare_runtime(net or lit_enhancer(in_ch=3), device, compile_model=compile_model)
    return NetEngine(runtime, "f" * 64, precision, budget_mb)


@pytest.fixture(scope="module")
def cpu_reference() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """CPU float32 outputs (s = 1 and s = 4) of a 1536 x 2048 DR-like frame, computed once."""
    frame = dr_frame((1536, 2048))
    return {
        scale: (
            frame,
            engine_on(torch.device("cpu"), "float32", lit_enhancer(in_ch=3, scale=scale)).enhance(frame).pixels,
        )
        for scale in (1, 4)
    }


@pytest.mark.parametrize("scale", [1, 4])
@pytest.mark.parametrize("precision", ["float32", "float16", "bfloat16"])
def test_whole_frame_on_cuda_is_within_the_bounds_of_cpu_float32(
    cpu_reference: dict[int, tuple[np.ndarray, np.ndarray]], precision: str, scale: int
) -> None:
    frame, reference = cpu_reference[scale]
    result = engine_on(CUDA0, precision, lit_enhancer(in_ch=3, scale=scale)).enhance(frame)
    assert result.parameters["device"] == "cuda:0" and result.parameters["tiled"] is False
    assert_within(reference, result.pixels, precision)
    assert set(result.timings) == {"upload", "compute", "download"} and result.timings["compute"] > 0


@pytest.mark.parametrize(
    ("precision", "compile_model"), [("float32", False), ("float16", False), ("bfloat16", False), ("float16", True)]
)
def test_exact_tiling_on_cuda_matches_the_whole_frame(precision: str, compile_model: bool) -> None:
    frame = dr_frame((1100, 1700), seed=1)
    engine = engine_on(CUDA0, precision, compile_model=compile_model)
    whole = engine.enhance(frame)
    tiled = engine.enhance_in_tiles(frame, TileSize(384, 512))
    assert tiled.parameters["tiled"] is True
    assert_within(whole.pixels, tiled.pixels, precision)


def test_frames_over_the_budget_are_tiled_on_cuda_and_stay_within_bounds(
    cpu_reference: dict[int, tuple[np.ndarray, np.ndarray]],
) -> None:
    frame, reference = cpu_reference[1]
    engine = engine_on(CUDA0, "float16")
    engine.warm_up()  # calibrates the activation memory the planner uses
    engine.memory_budget_mb = 256  # the frame needs about 1 GiB whole
    result = engine.enhance(frame)
    assert result.parameters["tiled"] is True
    assert_within(reference, result.pixels, "float16")


def test_two_workers_with_their_copy_streams_give_the_pixels_of_one_frame_at_a_time() -> None:
    """Pinned buffers and copy streams of two workers over many frames: no buffer is reused
    before its copy ended, so every frame comes back as it does alone."""
    runtime = prepare_runtime(lit_enhancer(in_ch=3), CUDA0)
    workers = [NetEngine(runtime, "f" * 64, "float16") for _ in range(2)]
    frames = [dr_frame((700 + 16 * (i % 3), 900), seed=i) for i in range(24)]
    alone = [workers[0].enhance(frame).pixels for frame in frames]
    together: dict[int, np.ndarray] = {}

    def work(worker: NetEngine, indices: range) -> None:
        for index in indices:
            together[index] = worker.enhance(frames[index]).pixels

    threads = [
        threading.Thread(target=work, args=(worker, range(k, len(frames), 2))) for k, worker in enumerate(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, pixels in enumerate(alone):
        assert np.array_equal(together[index], pixels), f"frame {index} differs when two workers run"


def test_an_induced_out_of_memory_fails_that_frame_only_and_the_next_one_succeeds() -> None:
    engine = engine_on(CUDA0, "float16")
    frame = dr_frame((512, 640))
    expected = engine.enhance(frame).pixels
    network = engine.runtime.forward

    def exhausting(gray: torch.Tensor) -> torch.Tensor:
        torch.empty(1 << 48, dtype=torch.uint8, device=gray.device)  # 256 TiB: the allocator refuses
        return network(gray)

    engine.runtime.forward = exhausting
    with pytest.raises(FrameError) as failure:
        engine.enhance(frame)
    assert failure.value.reason is Reason.DEVICE_ERROR and "out of memory" in str(failure.value).lower()
    engine.runtime.forward = network
    assert np.array_equal(engine.enhance(frame).pixels, expected)


DEVICE_LOST_SCRIPT = textwrap.dedent("""
    import numpy as np, torch
    from drdaemon.engines.net import NetEngine, prepare_runtime
    from drdaemon.errors import DeviceLost
    from drdaemon.model.network import Enhancer, EnhancerSpec

    engine = NetEngine(prepare_runtime(Enhancer(EnhancerSpec()).eval(), torch.device("cuda", 0)), "f" * 64, "float16")
    frame = np.full((64, 64), 1000, np.uint16)
    engine.enhance(frame)

    def poisoned(gray):
        index = torch.tensor([1 << 20], device=gray.device)
        return gray.flatten()[index].view(1, 1, 1, 1).expand_as(gray)  # out of bounds: a device-side assert

    engine.runtime.forward = poisoned
    try:
        engine.enhance(frame)
    except DeviceLost as lost:
        print("DEVICE_LOST", lost)
    else:
        print("NO_ERROR")
""")


def test_a_sticky_device_error_is_a_lost_device() -> None:
    """A device-side assert poisons the CUDA context; run in its own process so this one keeps its GPU."""
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_LAUNCH_BLOCKING="1")
    proc = subprocess.run(
        [sys.executable, "-c", DEVICE_LOST_SCRIPT], capture_output=True, text=True, env=env, timeout=240
    )
    assert "DEVICE_LOST" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


def run_daemon(
    root: Path, devices: list[str], frames: list[NDArray[np.uint16]], precision: str = "float16"
) -> list[dict[str, Any]]:
    """A real ``drdaemon run`` on ``devices``; returns the sidecars of ``frames`` in order."""
    weights = root / "enhancer.safetensors"
    write_weights(weights, in_ch=3, provenance={"run": "gpu-test"})
    config = write_config(
        root / "daemon.toml",
        engine=net_engine(weights.name, devices, precision) + f"warm_up_frame_size = {list(frames[0].shape)}\n",
    )
    outbox, output = run_daemon_on(root, config, frames, timeout=240)
    assert len(list(outbox.glob("*.json"))) == len(frames), output[-4000:]
    return [json.loads((outbox / f"f{i}.tif.json").read_text()) for i in range(len(frames))]


def test_daemon_end_to_end_on_cuda_records_the_device_and_cuda_event_timings(tmp_path: Path) -> None:
    frames = [dr_frame((1200, 1600), seed=i) for i in range(4)]
    sidecars = run_daemon(tmp_path, ["cuda:0"], frames)
    reference = engine_on(CUDA0, "float16")
    for frame, sidecar in zip(frames, sidecars, strict=True):
        assert sidecar["software"]["device"] == "cuda:0"
        assert sidecar["engine"]["parameters"]["precision"] == "float16"
        assert {"upload", "compute", "download"} <= set(sidecar["timings"])
        written = tifffile.imread(tmp_path / sidecar["output"]["path"])
        # Same device and precision in another process (cuDNN may pick other algorithms there).
        assert_within(reference.enhance(frame).pixels, written, "float16")


@two_gpus
def test_daemon_spreads_frames_over_two_gpus(tmp_path: Path) -> None:
    frames = [dr_frame((900, 1200), seed=i) for i in range(8)]
    sidecars = run_daemon(tmp_path, ["cuda:0", "cuda:1"], frames)
    assert {s["software"]["device"] for s in sidecars} == {"cuda:0", "cuda:1"}


@two_gpus
def test_the_second_gpu_agrees_with_the_first_and_with_cpu_float32(
    cpu_reference: dict[int, tuple[np.ndarray, np.ndarray]],
) -> None:
    frame, reference = cpu_reference[1]
    first = engine_on(CUDA0, "float16").enhance(frame).pixels
    second = engine_on(torch.device("cuda", 1), "float16").enhance(frame)
    assert second.parameters["device"] == "cuda:1"
    assert_within(first, second.pixels, "float16")
    assert_within(reference, second.pixels, "float16")


def test_a_few_trainer_iterations_on_cuda_with_autocast(tmp_path: Path) -> None:
    import math

    from tests.trainer_testkit import make_data, tiny_config, write_tiny_clip_config
    from trainer.clip.scheme import Trainer

    abnormal, normal = make_data(tmp_path)
    cfg = tiny_config(write_tiny_clip_config(tmp_path), tmp_path / "run", total_iters=10)
    cfg = cfg.model_copy(
        update={"run": cfg.run.model_copy(update={"device": "cuda", "precision": "bf16", "deterministic": False})}
    )
    trainer = Trainer(cfg, abnormal, normal, tmp_path / "w.safetensors")
    assert trainer.amp_dtype == torch.bfloat16
    trainer.run()
    assert all(math.isfinite(v) for v in trainer.loss_values().values())
    assert (tmp_path / "w.safetensors").is_file()


@two_gpus
def test_torchrun_with_nccl_on_two_gpus(tmp_path: Path) -> None:
    from tests.trainer_testkit import make_data, tiny_overrides, trainer_command, write_tiny_clip_config

    abnormal, normal = make_data(tmp_path)
    overrides = [
        o
        for o in tiny_overrides(write_tiny_clip_config(tmp_path), tmp_path / "run")
        if not o.startswith(("run.device", "run.precision", "run.deterministic"))
    ]
    overrides += ['run.device="cuda"', 'run.precision="bf16"', "run.deterministic=false"]
    sets = [arg for value in overrides for arg in ("--set", value)]
    out = tmp_path / "ddp.safetensors"
    proc = subprocess.run(
        trainer_command(abnormal, normal, out, *sets, processes=2),
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        cwd=tmp_path,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file()
