from pathlib import Path

import numpy as np
import pytest
import torch

from drdaemon.config import ConfigError, EngineConfig
from drdaemon.engines import build_engines
from drdaemon.engines.base import Engine
from drdaemon.engines.net import NetEngine, prepare_runtime, resolve_device
from drdaemon.errors import DeviceLost, FrameError, Reason, Stage
from drdaemon.io.durable import file_sha256
from drdaemon.kernels.window import frame_to_unit, unit_to_u16
from drdaemon.model.network import Enhancer
from drdaemon.model.tiling import TileSize
from tests.testkit import lit_enhancer, write_weights

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks behaviour without a GPU")


def xray_like(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A smooth 16-bit frame with structure, so the enhancement is not trivially flat."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    base = 20000 + 15000 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 500, shape)
    return np.clip(base, 0, 65535).astype(np.uint16)


def cpu_engine(net: Enhancer, precision: str = "float32", budget_mb: int = 4096) -> NetEngine:
    return NetEngine(prepare_runtime(net, torch.device("cpu")), "f" * 64, precision, budget_mb)


@pytest.mark.parametrize("shape", [(37, 53), (64, 1), (1, 7), (101, 66)])
def test_engine_keeps_odd_shapes_and_writes_uint16(shape: tuple[int, int]) -> None:
    result = cpu_engine(lit_enhancer()).enhance(xray_like(shape))
    assert result.pixels.shape == shape and result.pixels.dtype == np.uint16


def test_engine_equals_normalise_network_and_map_back_on_the_host() -> None:
    """The device-side normalisation is the trainer's: same window, same mapping to 16 bits."""
    net = lit_enhancer(in_ch=3)
    frame = xray_like((45, 70))
    unit, window = frame_to_unit(frame)
    with torch.no_grad():
        gray = torch.from_numpy(unit)[None, None]
        reference = unit_to_u16(net(gray.expand(-1, 3, -1, -1))[0, 0].numpy())
    result = cpu_engine(net).enhance(frame)
    assert result.parameters["window"] == [window.low, window.high]
    assert np.abs(result.pixels.astype(int) - reference).max() <= 1
    assert len(np.unique(result.pixels)) > 100  # a real image, not a clamped one


@pytest.mark.parametrize("scale", [1, 4])
def test_engine_tiles_only_over_budget_and_tiles_change_nothing(scale: int) -> None:
    net = lit_enhancer(scale=scale)
    frame = xray_like((300, 211))
    whole = cpu_engine(net, budget_mb=4096).enhance(frame)
    small_budget = cpu_engine(net, budget_mb=64)
    small_budget.memory_budget_mb = 2  # below the config minimum, to force tiles on a small frame
    tiled = small_budget.enhance(frame)
    assert whole.parameters["tiled"] is False and whole.parameters["tile"] is None
    assert tiled.parameters["tiled"] is True
    assert np.abs(whole.pixels.astype(int) - tiled.pixels).max() <= 1  # 1e-4 in float is 6.5 levels


def test_compiled_model_gives_the_pixels_of_the_eager_model_whole_and_in_tiles() -> None:
    """``engine.compile = true`` (torch.compile) changes the speed, never the output, tiled or not."""
    net = lit_enhancer(in_ch=3)
    frame = xray_like((70, 53))
    eager = cpu_engine(net)
    compiled = NetEngine(prepare_runtime(net, torch.device("cpu"), compile_model=True), "f" * 64, "float32")
    assert compiled.runtime.forward is not compiled.runtime.model  # the compiled module runs
    assert compiled.runtime.tiled is not None  # and the tiler has its own compiled parts
    assert np.abs(compiled.enhance(frame).pixels.astype(int) - eager.enhance(frame).pixels).max() <= 1
    tile = TileSize(32, 24)
    tiled = compiled.enhance_in_tiles(frame, tile)
    assert tiled.parameters["tiled"] is True
    assert np.abs(tiled.pixels.astype(int) - eager.enhance_in_tiles(frame, tile).pixels).max() <= 1


def test_three_channel_weights_are_folded_to_one_channel_with_the_same_illumination() -> None:
    """The first convolution summed over its input channels equals it on a replicated gray frame."""
    net = lit_enhancer(in_ch=3)
    runtime = prepare_runtime(net, torch.device("cpu"), channels_last=False)
    assert runtime.model.model.stem[0].in_channels == 1
    assert net.stem[0].in_channels == 3  # the caller's model is left as it was
    assert runtime.model.model.spec.in_ch == 3  # the weights' spec is still what the sidecar records
    gray = torch.rand(1, 1, 41, 57)
    with torch.no_grad():
        expanded = net.full_illumination(gray.expand(-1, 3, -1, -1))
        folded = runtime.model.model.full_illumination(gray)
    assert torch.allclose(folded, expanded, rtol=1e-5, atol=1e-6)


def psnr_u16(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(65535.0**2 / mse))


def test_bfloat16_on_cpu_is_close_to_float32() -> None:
    net = lit_enhancer()
    frame = xray_like((96, 120))
    full = cpu_engine(net, "float32").enhance(frame)
    half = cpu_engine(net, "bfloat16").enhance(frame)
    assert half.parameters["precision"] == "bfloat16"
    assert psnr_u16(full.pixels, half.pixels) >= 50.0  # the target for half precision
    assert not np.array_equal(full.pixels, half.pixels)  # it really ran in bfloat16


def test_timings_and_parameters_for_the_sidecar() -> None:
    result = cpu_engine(lit_enhancer(scale=2)).enhance(xray_like((40, 40)))
    assert set(result.timings) == {"upload", "compute", "download"}
    assert all(t >= 0 for t in result.timings.values()) and result.timings["compute"] > 0
    assert result.parameters["illumination_scale"] == 2
    assert result.parameters["device"] == "cpu"


def test_other_input_dtypes_are_accepted() -> None:
    engine = cpu_engine(lit_enhancer())
    for frame in (xray_like((30, 31)).astype(np.float32) / 7, (xray_like((30, 31)) >> 8).astype(np.uint8)):
        assert engine.enhance(frame).pixels.shape == (30, 31)
    with pytest.raises(FrameError) as info:
        engine.enhance(np.zeros((4, 5, 3), np.uint16))
    assert info.value.reason is Reason.UNSUPPORTED


def test_build_from_config_gives_engines_of_the_daemon_interface(tmp_path: Path) -> None:
    weights = tmp_path / "enhancer.safetensors"
    write_weights(weights, in_ch=3, scale=4)
    engines = build_engines(
        EngineConfig(
            name="net",
            weights=weights,
            devices=["cpu"],
            precision="float32",
            workers_per_device=2,
            warm_up_frame_size=(50, 77),
        )
    )
    assert len(engines) == 1  # the CPU gets one worker: two would share the same cores
    engine = engines[0]
    assert isinstance(engine, Engine)
    assert (engine.name, engine.device, engine.weights_sha256) == ("net", "cpu", file_sha256(weights))
    assert isinstance(engine, NetEngine)
    assert engine.warm_up_shape == (50, 77)
    engine.warm_up()
    result = engine.enhance(xray_like((50, 77)))
    assert result.pixels.shape == (50, 77) and result.parameters["illumination_scale"] == 4


def test_missing_or_pickled_weights_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        build_engines(EngineConfig(name="net", weights=tmp_path / "none.safetensors", devices=["cpu"]))
    pickled = tmp_path / "w.pt"
    torch.save(lit_enhancer().state_dict(), pickled)
    with pytest.raises(ConfigError, match="refused"):
        build_engines(EngineConfig(name="net", weights=pickled, devices=["cpu"]))


@no_cuda
def test_a_configured_gpu_that_is_missing_stops_the_start_instead_of_using_the_cpu(tiny_weights: Path) -> None:
    weights = tiny_weights
    with pytest.raises(DeviceLost, match="cuda:1"):
        build_engines(EngineConfig(name="net", weights=weights, devices=["cpu", "cuda:1"]))


@no_cuda
def test_auto_device_runs_on_the_cpu_without_a_gpu() -> None:
    assert resolve_device("auto") == torch.device("cpu")


def test_unknown_device_names_are_configuration_errors() -> None:
    with pytest.raises(ConfigError, match=r"engine\.devices"):
        resolve_device("gpu0")


class Failing(torch.nn.Module):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.error


def failing_engine(error: Exception) -> NetEngine:
    engine = cpu_engine(lit_enhancer())
    engine.runtime.forward = Failing(error)
    return engine


def test_out_of_memory_fails_only_the_frame_with_a_device_reason() -> None:
    engine = failing_engine(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.00 GiB"))
    with pytest.raises(FrameError) as info:
        engine.enhance(xray_like((20, 20)))
    assert (info.value.stage, info.value.reason) == (Stage.ENHANCE, Reason.DEVICE_ERROR)
    assert "out of memory" in str(info.value)


def test_a_failed_frame_waits_for_its_queued_copies_before_the_buffers_serve_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the non-blocking upload is queued, a failure must not hand the pinned buffer to
    the next frame while the copy may still read it: the worker synchronises its copy stream."""
    from contextlib import nullcontext

    class CopyStream:
        synchronized = 0

        def synchronize(self) -> None:
            self.synchronized += 1

    engine = failing_engine(RuntimeError("CUDA error: an illegal memory access was encountered"))
    copy_stream = CopyStream()
    monkeypatch.setattr(engine, "copy_stream", copy_stream)  # the CPU engine has none; stand in for a GPU worker's
    monkeypatch.setattr(engine, "_on", lambda stream: nullcontext())
    with pytest.raises(FrameError):
        engine.enhance(xray_like((20, 20)))
    assert copy_stream.synchronized == 1


def test_other_engine_failures_are_engine_errors() -> None:
    with pytest.raises(FrameError) as info:
        failing_engine(ValueError("nan in weights")).enhance(xray_like((20, 20)))
    assert info.value.reason is Reason.ENGINE_ERROR


def test_a_device_that_stops_answering_is_lost_not_a_frame_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = failing_engine(RuntimeError("CUDA error: unspecified launch failure"))
    with pytest.raises(FrameError) as info:  # the device still answers: only this frame fails
        engine.enhance(xray_like((20, 20)))
    assert info.value.reason is Reason.DEVICE_ERROR
    monkeypatch.setattr(engine.runtime, "device", torch.device("cuda", 0))  # as seen by the classifier
    monkeypatch.setattr(NetEngine, "_device_alive", lambda self: False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    with pytest.raises(DeviceLost):
        raise engine._classify(RuntimeError("CUDA error: unspecified launch failure"))


def test_warm_up_tries_the_exact_tiler_before_the_first_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken tiled path stops the daemon at start-up, not at the first oversized frame."""
    engine = cpu_engine(lit_enhancer())
    engine.warm_up()

    def broken_tiler(gray: torch.Tensor, tile: TileSize) -> torch.Tensor:
        raise ValueError("tiling is broken")

    monkeypatch.setattr(engine.runtime.model, "tiled", broken_tiler)
    engine.enhance(xray_like((40, 40)))  # a frame that fits runs whole and never meets the tiler
    with pytest.raises(FrameError, match="tiling is broken"):
        engine.warm_up()


def test_warm_up_runs_the_detector_frame_size_when_configured() -> None:
    """The first real frame then finds its allocations and kernels ready."""
    seen: list[tuple[int, ...]] = []
    engine = cpu_engine(lit_enhancer())
    network = engine.runtime.forward

    def recording(gray: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(gray.shape[-2:]))
        return network(gray)

    engine.runtime.forward = recording
    engine.warm_up()
    assert (123, 77) not in seen
    engine.warm_up_shape = (123, 77)
    engine.warm_up()
    assert seen[-1] == (123, 77)


def test_sixteen_bit_pixels_survive_the_int16_carrier_both_ways() -> None:
    from drdaemon.engines.net import host_upload_view, unit_to_u16_bits, uploaded_to_float

    values = np.array([[0, 1, 32767, 32768, 40000, 65535]], dtype=np.uint16)
    assert np.array_equal(uploaded_to_float(torch.from_numpy(host_upload_view(values))).numpy(), values)
    unit = np.array([[0.0, 0.25, 0.5, 0.500008, 0.75, 1.0, 1.5, -0.2]], dtype=np.float32)
    bits = unit_to_u16_bits(torch.from_numpy(unit)).numpy().view(np.uint16)
    assert np.array_equal(bits, unit_to_u16(unit))


def test_a_frame_whose_output_is_not_finite_fails_as_engine_error_instead_of_black_pixels() -> None:
    net = lit_enhancer()
    assert net.head.conv.bias is not None
    with torch.no_grad():
        net.head.conv.bias.fill_(float("nan"))
    with pytest.raises(FrameError) as caught:
        cpu_engine(net).enhance(xray_like((40, 30)))
    assert caught.value.reason is Reason.ENGINE_ERROR
    assert "not finite" in str(caught.value) and "1200 of 1200" in str(caught.value)


def test_the_precision_follows_the_device_unless_set_and_the_sidecar_records_the_one_that_ran(
    tiny_weights: Path,
) -> None:
    from drdaemon.defaults import precision_for_device

    weights = tiny_weights
    assert EngineConfig().precision == "auto"  # the default: not float16, about half bfloat16's speed on a CPU
    default = build_engines(EngineConfig(name="net", weights=weights, devices=["cpu"]))[0]
    assert isinstance(default, NetEngine)
    assert default.precision == "bfloat16"  # the fastest within the precision bound on a CPU
    assert default.enhance(xray_like((40, 44))).parameters["precision"] == "bfloat16"
    explicit = build_engines(EngineConfig(name="net", weights=weights, devices=["cpu"], precision="float16"))[0]
    assert explicit.enhance(xray_like((40, 44))).parameters["precision"] == "float16"  # an explicit choice is kept
    assert precision_for_device("auto", "cuda") == "float16" and precision_for_device("float32", "cuda") == "float32"
