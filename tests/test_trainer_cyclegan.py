"""The CycleGAN scheme: its parts (PatchGAN, history buffer, schedule), a few iterations, exact resume,
export into the daemon's net engine, the scheme in model card and sidecar, and torchrun."""

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import load_file
from torch import nn

from drdaemon.io.weights import LoadedWeights, load_weights
from drdaemon.kernels.window import frame_to_unit, unit_to_u16
from drdaemon.model.network import Enhancer
from tests.testkit import REPO
from tests.trainer_testkit import QUIET_CPU_RUN, make_data, one_torch_thread, trainer_command
from trainer.cyclegan.patchgan import PatchDiscriminator, receptive_field
from trainer.cyclegan.scheme import CycleGanTrainer, LinearDecay
from trainer.shared.checkpoint import write_checkpoint
from trainer.shared.config import TrainConfig, load_config
from trainer.shared.enhancer import start_near_identity
from trainer.shared.errors import TrainerError
from trainer.shared.history import HistoryBuffer

single_thread = pytest.fixture(autouse=True)(one_torch_thread)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_data(tmp_path_factory.mktemp("cyclegan"))


def cyclegan_overrides(run_dir: Path, **cyclegan: float) -> list[str]:
    """Three iterations at the full rate and three decaying, a history buffer that fills by the third."""
    settings: dict[str, float] = {
        "constant_iters": 3,
        "decay_iters": 3,
        "batch": 2,
        "history_size": 3,
        "disc_width": 8,
        "lr": 1e-3,
    } | cyclegan
    return [f"cyclegan.{k}={v}" for k, v in settings.items()] + [
        'run.scheme="cyclegan"',
        f'run.run_dir="{run_dir}"',
        "data.crop_size=32",
        "data.workers=0",
        *QUIET_CPU_RUN,
        "run.log_every=1",
    ]


def cyclegan_config(run_dir: Path, **cyclegan: float) -> TrainConfig:
    return load_config(None, cyclegan_overrides(run_dir, **cyclegan))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


# -- the parts ---------------------------------------------------------------------------


def test_patchgan_sees_70_by_70_pixels_by_its_layers_and_by_a_gradient_probe() -> None:
    disc = PatchDiscriminator(width=8)
    assert receptive_field(disc) == 70
    assert [m.out_channels for m in disc.modules() if isinstance(m, nn.Conv2d)] == [8, 16, 32, 64, 1]
    # Instance normalisation mixes the whole map; without it only the convolutions' window remains.
    for index, layer in enumerate(disc.layers):
        if isinstance(layer, nn.InstanceNorm2d):
            disc.layers[index] = nn.Identity()
    image = torch.rand(1, 1, 160, 160, requires_grad=True)
    scores = disc(image)
    assert scores.shape == (1, 1, 18, 18)  # 160 -> 80 -> 40 -> 20 -> 19 -> 18, the published sizes
    scores[0, 0, 9, 9].backward()
    assert image.grad is not None
    rows, cols = torch.nonzero(image.grad[0, 0], as_tuple=True)
    assert int(rows.max() - rows.min() + 1) == 70 and int(cols.max() - cols.min() + 1) == 70


def test_history_buffer_fills_then_swaps_about_half_and_stays_bounded() -> None:
    buffer = HistoryBuffer(size=4, seed=0, stream=0)
    first = torch.arange(4.0).reshape(4, 1, 1, 1)
    assert torch.equal(buffer.query(first, iteration=0), first)  # filling: everything passes through
    swapped = 0
    for it in range(1, 201):
        new = torch.full((2, 1, 1, 1), 100.0 + it)
        shown = buffer.query(new, iteration=it)
        assert len(buffer.images) == 4
        for image, out in zip(new, shown, strict=True):
            if not torch.equal(image, out):
                swapped += 1
                assert float(out) < 100.0 + it  # an older image came back, and the new one went in
                assert any(torch.equal(image, kept) for kept in buffer.images)
    assert 160 < swapped < 240, swapped  # probability one half over 400 images
    assert torch.equal(HistoryBuffer(size=0, seed=0, stream=0).query(first, 5), first)


def test_history_buffer_draws_depend_only_on_seed_stream_and_iteration() -> None:
    def feed(buffer: HistoryBuffer, iterations: Iterable[int]) -> list[torch.Tensor]:
        return [buffer.query(torch.full((2, 1, 2, 2), float(it)), it) for it in iterations]

    straight = feed(HistoryBuffer(size=3, seed=7, stream=0), range(10))
    half = HistoryBuffer(size=3, seed=7, stream=0)
    feed(half, range(5))
    resumed = HistoryBuffer(size=3, seed=7, stream=0)
    resumed.load_state_dict(half.state_dict(), torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(straight[5:], feed(resumed, range(5, 10)), strict=True))
    other = feed(HistoryBuffer(size=3, seed=7, stream=1), range(10))
    assert not all(torch.equal(a, b) for a, b in zip(straight, other, strict=True))


def test_learning_rate_is_constant_then_decays_linearly_towards_zero() -> None:
    decay = LinearDecay(constant=4, decay=4)
    assert [decay(i) for i in range(8)] == pytest.approx([1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2])
    assert decay(100) == 0.0


def test_the_enhancer_can_darken_as_the_reverse_generator_must() -> None:
    """L is a ReLU with no upper bound, so L > 1 divides the frame down: no other head is needed."""
    enhancer = start_near_identity(Enhancer())
    assert enhancer.head.conv.bias is not None
    with torch.no_grad():
        enhancer.head.conv.weight.zero_()
        enhancer.head.conv.bias.fill_(2.0)
    frame = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(enhancer(frame), frame / (2.0 + 1e-4), atol=1e-6)


# -- the run ----------------------------------------------------------------------------


def test_a_few_iterations_train_all_four_networks_with_finite_losses(data: tuple[Path, Path], tmp_path: Path) -> None:
    abnormal, normal = data
    cfg = cyclegan_config(tmp_path / "run")
    trainer = CycleGanTrainer(cfg, abnormal, normal, tmp_path / "w.safetensors")
    nets = {
        "to_normal": trainer.generators.to_normal,
        "to_abnormal": trainer.generators.to_abnormal,
        "disc_normal": trainer.discriminators.normal,
        "disc_abnormal": trainer.discriminators.abnormal,
    }
    before = {name: snapshot(net) for name, net in nets.items()}
    rates: list[float] = []
    while trainer.iteration < 6:
        trainer.run(until=trainer.iteration + 1)
        losses = trainer.loss_values()
        assert {"generators", "adversarial", "cycle", "identity", "disc_normal", "disc_abnormal"} <= set(losses)
        assert all(math.isfinite(v) for v in losses.values()), losses
        rates.append(losses["lr"])
    assert all(changed(before[name], net) for name, net in nets.items())
    assert rates == pytest.approx([1e-3, 1e-3, 1e-3, 0.75e-3, 0.5e-3, 0.25e-3])
    assert len(trainer.history_normal.images) == 3 and len(trainer.history_abnormal.images) == 3
    assert list((tmp_path / "run" / "previews").glob("iter_*.png"))
    assert list((tmp_path / "run" / "tensorboard").iterdir())


def test_without_identity_loss_the_term_is_left_out(data: tuple[Path, Path], tmp_path: Path) -> None:
    abnormal, normal = data
    trainer = CycleGanTrainer(
        cyclegan_config(tmp_path / "run", identity_fraction=0, constant_iters=1, decay_iters=0),
        abnormal,
        normal,
        tmp_path / "w.safetensors",
    )
    trainer.run()
    assert "identity" not in trainer.loss_values()


def test_interrupted_and_resumed_run_gives_the_same_weights(data: tuple[Path, Path], tmp_path: Path) -> None:
    abnormal, normal = data
    straight = tmp_path / "straight.safetensors"
    CycleGanTrainer(cyclegan_config(tmp_path / "a"), abnormal, normal, straight).run()

    cfg = cyclegan_config(tmp_path / "b")
    out = tmp_path / "resumed.safetensors"
    # Stop while the history buffers fill, then inside the learning-rate decay with full buffers.
    first = CycleGanTrainer(cfg, abnormal, normal, out).run(until=1)
    assert not first.finished and not out.exists()
    second = CycleGanTrainer(cfg, abnormal, normal, out, resume=True)
    assert second.iteration == 1
    second.run(until=4)
    third = CycleGanTrainer(cfg, abnormal, normal, out, resume=True)
    assert third.generator_optim.param_groups[0]["lr"] == pytest.approx(0.5e-3)  # what iteration 4 runs at
    assert len(third.history_abnormal.images) == 3
    result = third.run()
    assert result.finished and result.iterations == 6
    a, b = load_file(str(straight)), load_file(str(out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_the_other_scheme_is_refused(data: tuple[Path, Path], tmp_path: Path) -> None:
    abnormal, normal = data
    cfg = cyclegan_config(tmp_path / "run")
    write_checkpoint(tmp_path / "run" / "checkpoint.pt", {"clip": {"model": "RN50"}, "iteration": 3})
    with pytest.raises(TrainerError, match="clip scheme"):
        CycleGanTrainer(cfg, abnormal, normal, tmp_path / "w.safetensors", resume=True)


def test_exported_forward_generator_runs_in_the_daemon_and_names_its_scheme(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    abnormal, normal = data
    out = tmp_path / "weights.safetensors"
    trainer = CycleGanTrainer(cyclegan_config(tmp_path / "run"), abnormal, normal, out)
    result = trainer.run()
    loaded = load_weights(out)
    assert loaded.sha256 == result.weights_sha256
    forward = trainer.generators.to_normal.state_dict()
    assert all(torch.equal(forward[k], v) for k, v in loaded.model.state_dict().items())
    assert loaded.provenance["scheme"] == "cyclegan" and "clip_model" not in loaded.provenance
    assert loaded.training_scheme == "cyclegan"
    assert result.card is not None
    card = json.loads(result.card.read_text())
    assert card["scheme"] == "cyclegan" and card["clip"] is None
    assert card["config"]["run"]["scheme"] == "cyclegan" and card["config"]["cyclegan"]["history_size"] == 3
    assert card["iterations"] == 6 and {"cycle", "disc_normal"} <= set(card["final_losses"])

    from drdaemon.config import EngineConfig
    from drdaemon.engines.net import build_net_engines

    engine = build_net_engines(EngineConfig(name="net", weights=out, devices=["cpu"], precision="float32"))[0]
    frame = np.asarray(tifffile.imread(next(abnormal.glob("*.tif"))))
    enhanced = engine.enhance(frame)
    assert enhanced.pixels.shape == frame.shape and enhanced.pixels.dtype == np.uint16
    assert enhanced.parameters["training_scheme"] == "cyclegan"
    unit, _ = frame_to_unit(frame)
    with torch.no_grad():
        expected = unit_to_u16(loaded.model(torch.from_numpy(unit)[None, None])[0, 0].numpy())
    assert np.abs(enhanced.pixels.astype(int) - expected.astype(int)).max() <= 2


@pytest.mark.parametrize(
    "provenance, scheme",
    [
        ({"scheme": "cyclegan"}, "cyclegan"),
        ({"scheme": "clip", "clip_model": "RN101"}, "clip"),
        ({"clip_model": "RN101"}, "clip"),  # exported before the trainer recorded its scheme
        ({}, None),
    ],
)
def test_the_sidecar_scheme_comes_from_the_weights_provenance(provenance: dict[str, Any], scheme: str | None) -> None:
    loaded = LoadedWeights(model=Enhancer(), sha256="", path=Path("w"), provenance=provenance)
    assert loaded.training_scheme == scheme


def test_two_process_ddp_run_matches_one_process(data: tuple[Path, Path], tmp_path: Path) -> None:
    abnormal, normal = data
    single = tmp_path / "single.safetensors"
    cfg = cyclegan_config(tmp_path / "single.run")
    start = snapshot(CycleGanTrainer(cfg, abnormal, normal, tmp_path / "x").generators.to_normal)
    CycleGanTrainer(cfg, abnormal, normal, single).run()

    ddp = tmp_path / "ddp.safetensors"
    sets = [arg for value in cyclegan_overrides(tmp_path / "ddp.run") for arg in ("--set", value)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        trainer_command(abnormal, normal, ddp, "--scheme", "cyclegan", *sets, processes=2),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "6 iterations" in proc.stdout
    # As in the CLIP scheme's DDP test: half a batch per process and averaged gradients follow the
    # one-process trajectory up to float summation order, which Adam amplifies a little.
    a, b = load_file(str(single)), load_file(str(ddp))
    moved = torch.sqrt(sum((((a[k] - start[k]) ** 2).sum() for k in a), torch.zeros(())))
    apart = torch.sqrt(sum((((a[k] - b[k]) ** 2).sum() for k in a), torch.zeros(())))
    assert moved > 0
    assert apart < 0.15 * moved, (float(apart), float(moved))
    assert json.loads((tmp_path / "ddp.model_card.json").read_text())["run"]["world_size"] == 2


def test_the_command_line_offers_the_scheme_and_names_a_bad_cyclegan_key() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-m", "trainer", "--help"], capture_output=True, text=True, env=env, timeout=60
    ).stdout
    assert "--scheme" in out and "cyclegan" in out
    proc = subprocess.run(
        trainer_command("a", "b", "w", "--scheme", "cyclegan", "--set", "cyclegan.history_size=-1"),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2 and "history_size" in proc.stderr
    assert load_config(None, ["run.scheme=cyclegan"]).run.scheme == "cyclegan"


# -- the paper's feature priors ------------------------------------------------------------


def prior_trainer(data: tuple[Path, Path], tmp_path: Path, **cyclegan: float) -> CycleGanTrainer:
    from tests.trainer_testkit import write_tiny_clip_config

    abnormal, normal = data
    clip_json = write_tiny_clip_config(tmp_path)
    overrides = [*cyclegan_overrides(tmp_path / "run", **cyclegan), f'clip.model="{clip_json}"', 'clip.weights="none"']
    return CycleGanTrainer(load_config(None, overrides), abnormal, normal, tmp_path / "w.safetensors")


def test_feature_priors_are_off_by_default_and_load_no_clip(data: tuple[Path, Path], tmp_path: Path) -> None:
    trainer = CycleGanTrainer(
        cyclegan_config(tmp_path / "run", constant_iters=1, decay_iters=0), *data, tmp_path / "w.safetensors"
    )
    assert trainer.feature_extractor is None
    trainer.run()
    assert "feature_identity" not in trainer.loss_values() and "clahe_prior" not in trainer.loss_values()


def test_feature_priors_measure_the_distance_to_the_input_and_to_its_clahe(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    trainer = prior_trainer(data, tmp_path, feature_identity=1.0, clahe_prior=1.0)
    abnormal = torch.rand(2, 1, 32, 32) * 0.1
    clahe = torch.rand(2, 1, 32, 32)
    same = trainer.feature_priors(abnormal, clahe, abnormal)
    assert float(same["feature_identity"]) == pytest.approx(0.0, abs=1e-7)  # the output is the input
    assert float(same["clahe_prior"]) > 0
    towards = trainer.feature_priors(abnormal, clahe, clahe)
    assert float(towards["clahe_prior"]) == pytest.approx(0.0, abs=1e-7)  # the output is the CLAHE prior
    assert float(towards["feature_identity"]) > 0


def test_feature_priors_enter_the_generators_loss_with_their_weights(data: tuple[Path, Path], tmp_path: Path) -> None:
    trainer = prior_trainer(data, tmp_path, feature_identity=0.7, clahe_prior=0.3, constant_iters=1, decay_iters=0)
    trainer.run()
    v = trainer.loss_values()
    c = trainer.cfg.cyclegan
    expected = (
        v["adversarial"]
        + c.cycle_weight * v["cycle"]
        + c.identity_fraction * c.cycle_weight * v["identity"]
        + 0.7 * v["feature_identity"]
        + 0.3 * v["clahe_prior"]
    )
    assert v["clahe_prior"] > 0
    assert v["generators"] == pytest.approx(expected, rel=1e-5)
