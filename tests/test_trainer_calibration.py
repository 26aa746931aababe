"""Calibrated training: feature losses that mean the same for any CLIP, a prompt initialisation
that stops before the score saturates, and a run that reports its scores and losses without a TTY."""

import json
from pathlib import Path

import pytest
import torch

from tests.trainer_testkit import make_data, one_torch_thread, tiny_overrides, write_tiny_clip_config
from trainer.clip import losses as L
from trainer.clip.scheme import Trainer, score_saturated
from trainer.shared.config import load_config
from trainer.shared.run_loop import log_line

single_thread = pytest.fixture(autouse=True)(one_torch_thread)


def test_input_normalised_feature_loss_is_the_same_for_a_clip_with_larger_activations() -> None:
    torch.manual_seed(0)
    inputs = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4) * 3]
    outputs = [x + 0.1 * torch.randn_like(x) for x in inputs]
    weights = [1.0, 0.5]

    def both(scale: float) -> tuple[float, float]:
        ins, outs = [x * scale for x in inputs], [x * scale for x in outputs]
        raw = L.feature_loss(outs, ins, weights).item()
        relative = L.feature_loss(outs, ins, weights, L.feature_energy(ins)).item()
        return raw, relative

    raw_1, rel_1 = both(1.0)
    raw_k, rel_k = both(30.0)  # a trained tower's maps are far larger than a random one's
    assert raw_k == pytest.approx(900 * raw_1, rel=1e-4)
    assert rel_k == pytest.approx(rel_1, rel=1e-4)
    # a relative error: about 0.1^2 at level 0 (noise 0.1 on unit-variance maps)
    by_hand = sum(w * ((o - i) ** 2).mean() / (i**2).mean() for o, i, w in zip(outputs, inputs, weights, strict=True))
    assert rel_1 == pytest.approx(float(by_hand), rel=1e-5)


def test_prompt_initialisation_stops_pulling_samples_it_already_classifies_surely() -> None:
    # one abnormal frame far on the negative side (p = 0.9999), one barely right (p = 0.6)
    abnormal = torch.tensor([[10.0, 0.8], [0.4, 0.0]], requires_grad=True)
    normal = torch.tensor([[0.0, 0.1]], requires_grad=True)
    torch.autograd.backward(L.prompt_init_loss(abnormal, normal, confidence=0.95))
    assert abnormal.grad is not None and normal.grad is not None
    assert torch.all(abnormal.grad[0] == 0)  # saturated sample: no pull
    assert torch.all(abnormal.grad[1] != 0) and torch.all(normal.grad != 0)
    plain = L.prompt_init_loss(abnormal.detach(), normal.detach(), confidence=1.0)
    assert plain.item() == pytest.approx(L.prompt_init_loss(abnormal.detach(), normal.detach()).item())
    assert L.prompt_init_loss(abnormal.detach(), normal.detach(), 0.95).item() < plain.item()


def test_saturation_is_recognised_at_either_end() -> None:
    assert score_saturated(0.0) and score_saturated(1.0 - 1e-5) and score_saturated(1e-22)
    assert not score_saturated(0.5) and not score_saturated(0.01)
    assert log_line(20, 300, "stage 1", {"clip": 0.53, "identity": 6e-5}) == (
        "trainer: it 20/300 [stage 1] clip=0.53 identity=6e-05"
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("calibration")
    abnormal, normal = make_data(root)
    return abnormal, normal, write_tiny_clip_config(root)


def test_a_run_without_a_tty_logs_losses_every_log_every_and_keeps_its_score_history(
    data: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    abnormal, normal, clip_json = data
    overrides = [*tiny_overrides(clip_json, tmp_path / "run"), "run.log_every=2", 'loss.feature_norm="input"']
    out = tmp_path / "w.safetensors"
    result = Trainer(load_config(None, overrides), abnormal, normal, out).run()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trainer: it ")]
    assert [line.split()[2] for line in lines] == [f"{i}/14" for i in range(2, 15, 2)]
    assert any("prompt_init=" in line and "score_abnormal=" in line for line in lines)
    assert any("clip=" in line and "identity=" in line for line in lines)

    assert result.card is not None
    card = json.loads(result.card.read_text())
    score = card["score"]
    assert score["feature_norm"] == "input" and score["prompt_init_confidence"] == 0.95
    phases = {entry["phase"] for entry in score["history"]}
    assert len(score["history"]) == sum("score_" in line for line in lines) and len(phases) >= 3
    first = score["history"][0]
    assert {"score_abnormal", "score_normal"} <= set(first) and 0.0 <= first["score_abnormal"] <= 1.0
    assert any("score_output" in entry for entry in score["history"])
