"""The staged run on a tiny random CLIP: every phase, what each one trains, exact resume, export."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from drdaemon.io.durable import file_sha256
from drdaemon.io.weights import load_weights
from drdaemon.kernels.window import frame_to_unit, unit_to_u16
from tests.trainer_testkit import make_data, one_torch_thread, tiny_config, write_tiny_clip_config
from trainer.clip.scheme import Trainer
from trainer.shared.config import load_config
from trainer.shared.errors import TrainerError
from trainer.shared.schedule import Phase, PhaseKind, phase_at

single_thread = pytest.fixture(autouse=True)(one_torch_thread)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    root = tmp_path_factory.mktemp("trainer")
    abnormal, normal = make_data(root)
    return root, abnormal, normal, write_tiny_clip_config(root)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    after = module.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_every_phase_runs_and_trains_only_its_learner(setup: tuple[Path, Path, Path, Path], tmp_path: Path) -> None:
    _root, abnormal, normal, clip_json = setup
    cfg = tiny_config(clip_json, tmp_path / "run")
    trainer = Trainer(cfg, abnormal, normal, tmp_path / "w.safetensors")
    clip_before = snapshot(trainer.backbone)
    seen: set[tuple[PhaseKind, bool]] = set()
    while trainer.iteration < cfg.schedule.total_iters:
        phase = phase_at(trainer.iteration, cfg.schedule)
        enhancer, prompts = snapshot(trainer.enhancer), snapshot(trainer.prompts)
        trainer.run(until=trainer.iteration + 1)
        losses = trainer.loss_values()
        assert losses and all(math.isfinite(v) for v in losses.values()), (phase, losses)
        assert changed(prompts, trainer.prompts) == phase.trains_prompts, phase
        assert changed(enhancer, trainer.enhancer) == (not phase.trains_prompts), phase
        if phase.kind is PhaseKind.WARMUP:
            assert "clip" not in losses and {"identity", "clahe"} <= set(losses)
        if phase.kind is PhaseKind.ENHANCE:
            assert {"clip", "identity", "clahe"} <= set(losses)
        seen.add((phase.kind, phase.round >= 2))
    assert {
        (PhaseKind.PROMPT_INIT, False),
        (PhaseKind.WARMUP, False),
        (PhaseKind.ENHANCE, False),
        (PhaseKind.PROMPT_RANK, False),
        (PhaseKind.PROMPT_RANK, True),
        (PhaseKind.ENHANCE, True),
    } <= seen
    assert not changed(clip_before, trainer.backbone)  # frozen, BatchNorm statistics included
    assert (tmp_path / "w.safetensors").is_file()
    assert list((tmp_path / "run" / "previews").glob("iter_*.png"))
    assert list((tmp_path / "run" / "tensorboard").iterdir())


def test_prompt_initialisation_loss_falls(setup: tuple[Path, Path, Path, Path], tmp_path: Path) -> None:
    _root, abnormal, normal, clip_json = setup
    cfg = tiny_config(clip_json, tmp_path / "run", prompt_init_iters=40, total_iters=50)
    trainer = Trainer(cfg, abnormal, normal, tmp_path / "w.safetensors")
    phase = phase_at(0, cfg.schedule)
    history = [float(trainer.step(phase, batch)["prompt_init"]) for batch in trainer._loader(0, 40)]
    assert np.mean(history[-5:]) < np.mean(history[:5]) - 0.01, history


def test_interrupted_and_resumed_run_gives_the_same_weights(
    setup: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    _root, abnormal, normal, clip_json = setup
    straight = tmp_path / "straight.safetensors"
    Trainer(tiny_config(clip_json, tmp_path / "a"), abnormal, normal, straight).run()

    resumed = tmp_path / "resumed.safetensors"
    cfg = tiny_config(clip_json, tmp_path / "b")
    # Stop inside stage 1, then inside stage 2 (the later ranking loss needs the kept snapshot).
    first = Trainer(cfg, abnormal, normal, resumed).run(until=6)
    assert not first.finished and first.weights is None and not resumed.exists()
    second = Trainer(cfg, abnormal, normal, resumed, resume=True)
    assert second.iteration == 6
    second.run(until=12)
    third = Trainer(cfg, abnormal, normal, resumed, resume=True)
    result = third.run()
    assert result.finished and result.iterations == cfg.schedule.total_iters
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Identical content gives an identical file: the sidecar's weights_sha256 names the model.
    assert result.weights_sha256 == file_sha256(straight)


def test_resume_without_checkpoint_or_with_another_clip_is_refused(
    setup: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    _root, abnormal, normal, clip_json = setup
    cfg = tiny_config(clip_json, tmp_path / "run")
    with pytest.raises(TrainerError, match="no checkpoint"):
        Trainer(cfg, abnormal, normal, tmp_path / "w.safetensors", resume=True)
    Trainer(cfg, abnormal, normal, tmp_path / "w.safetensors").run(until=2)
    other = tmp_path / "other.json"
    other.write_text(clip_json.read_text())
    cfg2 = cfg.model_copy(update={"clip": cfg.clip.model_copy(update={"model": str(other)})})
    with pytest.raises(TrainerError, match="CLIP"):
        Trainer(cfg2, abnormal, normal, tmp_path / "w.safetensors", resume=True)


@pytest.mark.parametrize("scale", [1, 4])
def test_exported_weights_run_in_the_daemon(setup: tuple[Path, Path, Path, Path], tmp_path: Path, scale: int) -> None:
    _root, abnormal, normal, clip_json = setup
    cfg = tiny_config(clip_json, tmp_path / "run")
    cfg = cfg.model_copy(update={"enhancer": load_config(None, [f"enhancer.illumination_scale={scale}"]).enhancer})
    out = tmp_path / "weights.safetensors"
    result = Trainer(cfg, abnormal, normal, out).run()
    assert result.weights == out

    loaded = load_weights(out)
    assert loaded.sha256 == result.weights_sha256
    assert loaded.model.spec.in_ch == 1 and loaded.model.spec.illumination_scale == scale
    assert loaded.provenance["clip_weights"] == "none" and loaded.provenance["iterations"] == 14

    assert result.card is not None
    card = json.loads(result.card.read_text())
    assert card["weights"]["sha256"] == result.weights_sha256
    assert card["data"]["abnormal"]["files"] == 3 and len(card["data"]["normal"]["file_list_sha256"]) == 64
    assert card["config"]["schedule"]["total_iters"] == 14 and card["clip"]["weights"] == "none"
    assert set(card["final_losses"]) and card["duration_s"] > 0 and card["versions"]["torch"]
    # The score's temperature and feature scale actually used: a random CLIP's own is 100.
    score = {k: card["score"][k] for k in ("logit_scale", "feature_size", "feature_norm", "prompt_init_confidence")}
    assert score == {
        "logit_scale": 100.0,
        "feature_size": [32, 32],
        "feature_norm": "none",
        "prompt_init_confidence": 0.95,
    }

    from drdaemon.config import EngineConfig
    from drdaemon.engines.net import build_net_engines

    engine = build_net_engines(EngineConfig(name="net", weights=out, devices=["cpu"], precision="float32"))[0]
    frame = np.asarray(__import__("tifffile").imread(next(abnormal.glob("*.tif"))))
    enhanced = engine.enhance(frame)
    assert enhanced.pixels.shape == frame.shape and enhanced.pixels.dtype == np.uint16
    unit, _ = frame_to_unit(frame)
    with torch.no_grad():
        expected = unit_to_u16(loaded.model(torch.from_numpy(unit)[None, None])[0, 0].numpy())
    assert np.abs(enhanced.pixels.astype(int) - expected.astype(int)).max() <= 2


def test_mixed_precision_run_keeps_losses_finite(setup: tuple[Path, Path, Path, Path], tmp_path: Path) -> None:
    """bf16 autocast (what a GPU run uses by default) through every phase, here on the CPU."""
    _root, abnormal, normal, clip_json = setup
    cfg = tiny_config(clip_json, tmp_path / "run", total_iters=10)
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"precision": "bf16", "deterministic": False})})
    trainer = Trainer(cfg, abnormal, normal, tmp_path / "w.safetensors")
    assert trainer.amp_dtype == torch.bfloat16
    for stop in range(2, 11, 2):
        trainer.run(until=stop)
        assert all(math.isfinite(v) for v in trainer.loss_values().values())
    assert load_weights(tmp_path / "w.safetensors").model.spec.in_ch == 1


def test_ctrl_c_finishes_the_iteration_checkpoints_and_resumes_exactly(
    setup: tuple[Path, Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    _root, abnormal, normal, clip_json = setup
    straight = tmp_path / "straight.safetensors"
    Trainer(tiny_config(clip_json, tmp_path / "a"), abnormal, normal, straight).run()

    cfg = tiny_config(clip_json, tmp_path / "b")
    out = tmp_path / "interrupted.safetensors"
    trainer = Trainer(cfg, abnormal, normal, out)
    step = trainer.step

    def step_then_interrupt(phase: Phase, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        losses = step(phase, batch)
        if trainer.iteration == 9:  # inside the first stage-2 round's enhancer phase
            os.kill(os.getpid(), signal.SIGINT)
        return losses

    monkeypatch.setattr(trainer, "step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert not out.exists()
    resumed = Trainer(cfg, abnormal, normal, out, resume=True)
    assert resumed.iteration == 10  # the interrupted iteration was completed and checkpointed
    resumed.run()
    a, b = load_file(str(straight)), load_file(str(out))
    assert all(torch.equal(a[k], b[k]) for k in a)
