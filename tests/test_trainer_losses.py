"""The losses of docs/method.md against values worked out by hand."""

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from trainer.clip import losses as L


def test_score_is_the_softmax_weight_of_the_negative_prompt() -> None:
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # row 0 negative, row 1 positive
    images = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    s = L.negative_score(L.pair_logits(images, text))
    # image 0: cos_n = 1, cos_p = 0 -> e / (e + 1); image 1: cos_n = .6, cos_p = .8
    expected = [math.e / (math.e + 1), math.exp(0.6) / (math.exp(0.6) + math.exp(0.8))]
    assert s.tolist() == pytest.approx(expected, rel=1e-6)
    scaled = L.negative_score(L.pair_logits(images, text, logit_scale=100.0))
    assert scaled[0].item() == pytest.approx(1 / (1 + math.exp(-100)), rel=1e-6)


def test_prompt_init_loss_is_binary_cross_entropy_over_the_pair() -> None:
    abnormal = torch.tensor([[0.5, 0.1]])  # logits (negative, positive)
    normal = torch.tensor([[0.2, 0.7]])
    # abnormal should be negative: -log softmax[0]; normal positive: -log softmax[1]
    loss_b = -math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(0.1)))
    loss_w = -math.log(math.exp(0.7) / (math.exp(0.2) + math.exp(0.7)))
    assert L.prompt_init_loss(abnormal, normal).item() == pytest.approx((loss_b + loss_w) / 2, rel=1e-6)


def test_first_ranking_loss_hinges() -> None:
    s_w, s_b, s_t = torch.tensor([0.2, 0.1]), torch.tensor([0.8, 0.9]), torch.tensor([0.5, 0.05])
    m0, m1 = 0.9, 0.2
    # sample 0: max(0,.2-.8+.9)=.3, max(0,.5-.8+.9)=.6, max(0,.2-.5+.2)=0        -> .9
    # sample 1: max(0,.1-.9+.9)=.1, max(0,.05-.9+.9)=.05, max(0,.1-.05+.2)=.25   -> .4
    assert L.ranking_loss_first(s_w, s_b, s_t, m0, m1).item() == pytest.approx(0.65, abs=1e-6)


def test_later_ranking_loss_uses_previous_outputs() -> None:
    s_w, s_b, s_t, s_prev = (torch.tensor([x]) for x in (0.2, 0.8, 0.4, 0.3))
    # max(0,.2-.8+.9)=.3 + max(0,.3-.8+.9)=.4 + max(0,.2-.4+.2)=0 + max(0,.4-.3+.2)=.3
    loss = L.ranking_loss_later(s_w, s_b, s_t, s_prev, 0.9, 0.2, 0.2)
    assert loss.item() == pytest.approx(1.0, abs=1e-6)
    # all orderings satisfied with room to spare -> zero
    z_w, z_b, z_t, z_prev = (torch.tensor([x]) for x in (0.0, 1.0, 0.05, 0.3))
    zero = L.ranking_loss_later(z_w, z_b, z_t, z_prev, 0.5, 0.01, 0.01)
    assert zero.item() == 0.0


def test_feature_loss_weights_levels_and_skips_zero_weights() -> None:
    outputs = [torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 1, 1), torch.full((1, 1, 1, 1), float("nan"))]
    targets = [torch.ones(1, 1, 2, 2), torch.full((1, 2, 1, 1), 3.0), torch.zeros(1, 1, 1, 1)]
    # level 0: mse 1, weight .5; level 1: mse 9, weight 2; level 2: weight 0 (its NaN never enters)
    assert L.feature_loss(outputs, targets, [0.5, 2.0, 0.0]).item() == pytest.approx(18.5)


def test_feature_loss_gradients_reach_outputs_only() -> None:
    out = torch.zeros(2, 3, 4, 4, requires_grad=True)
    target = torch.ones(2, 3, 4, 4, requires_grad=True)
    torch.autograd.backward(L.feature_loss([out], [target], [1.0]))
    assert out.grad is not None and target.grad is None


def test_clip_loss_and_levels() -> None:
    assert L.clip_loss(torch.tensor([0.2, 0.4])).item() == pytest.approx(0.3)
    assert L.deepest_level([1, 1, 1, 1, 0.5], [1, 1.5, 1.5, 1, 0]) == 5
    assert L.deepest_level([1, 0, 0, 0, 0], [0, 0, 2, 0, 0]) == 3


# -- the score's temperature -------------------------------------------------------------------


def unit_at(difference: float) -> list[float]:
    """A unit 2-vector whose cosines to e_n = (1, 0) and e_p = (0, 1) differ by ``difference``."""
    angle = math.acos(difference / math.sqrt(2)) - math.pi / 4
    return [math.cos(angle), math.sin(angle)]


def score_by_hand(difference: float, temperature: float) -> float:
    """S = exp(T cos_n) / (exp(T cos_n) + exp(T cos_p)) = 1 / (1 + exp(-T (cos_n - cos_p)))."""
    return 1 / (1 + math.exp(-temperature * difference))


PROMPTS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # row 0 negative, row 1 positive


def scores(differences: list[float], temperature: float, text: torch.Tensor = PROMPTS) -> torch.Tensor:
    images = torch.tensor([unit_at(d) for d in differences])
    return L.negative_score(L.pair_logits(images, torch.nn.functional.normalize(text, dim=-1), temperature))


def test_ranking_losses_at_clip_temperature_match_hand_values_with_inactive_hinges() -> None:
    m0, m1, m2 = 0.9, 0.2, 0.2
    # per sample: cos_n - cos_p of I_w, I_b, I_t, I_{t-1}
    w, b, t, prev = [-0.02, -0.03], [0.03, 0.04], [0.0, 0.0], [0.01, -0.005]
    hand = {name: [score_by_hand(d, 100) for d in ds] for name, ds in {"w": w, "b": b, "t": t, "prev": prev}.items()}
    got = {name: scores(ds, 100.0) for name, ds in {"w": w, "b": b, "t": t, "prev": prev}.items()}
    for name in hand:
        assert got[name].tolist() == pytest.approx(hand[name], rel=1e-5)

    def relu(v: float) -> float:
        return max(0.0, v)

    first = [
        relu(hand["w"][i] - hand["b"][i] + m0)
        + relu(hand["t"][i] - hand["b"][i] + m0)
        + relu(hand["w"][i] - hand["t"][i] + m1)
        for i in range(2)
    ]
    later = [
        relu(hand["w"][i] - hand["b"][i] + m0)
        + relu(hand["prev"][i] - hand["b"][i] + m0)
        + relu(hand["w"][i] - hand["t"][i] + m1)
        + relu(hand["t"][i] - hand["prev"][i] + m2)
        for i in range(2)
    ]
    # Some hinges are off at temperature 100: sample 1's m0 margin is met (S_b - S_w > 0.9),
    # S_t exceeds S_w by more than m1 in both samples; at temperature 1 none of that can happen.
    assert hand["w"][1] - hand["b"][1] + m0 < 0 and all(hand["w"][i] - hand["t"][i] + m1 < 0 for i in range(2))
    assert L.ranking_loss_first(got["w"], got["b"], got["t"], m0, m1).item() == pytest.approx(sum(first) / 2, rel=1e-5)
    assert L.ranking_loss_later(got["w"], got["b"], got["t"], got["prev"], m0, m1, m2).item() == pytest.approx(
        sum(later) / 2, rel=1e-5
    )


Scores = dict[str, torch.Tensor]


def prompt_gradient(
    loss_of_scores: Callable[[Scores], torch.Tensor], temperature: float, **differences: list[float]
) -> torch.Tensor:
    text = PROMPTS.clone().requires_grad_(True)
    s = {name: scores(ds, temperature, text) for name, ds in differences.items()}
    torch.autograd.backward(loss_of_scores(s))
    assert text.grad is not None
    return text.grad


def test_enhanced_outputs_steer_prompt_refinement_only_at_the_clip_temperature(tmp_path: Path) -> None:
    """The default temperature is the CLIP's own (100 for a random CLIP); at 1 I_t drops out of L_prompt1."""
    from tests.trainer_testkit import write_tiny_clip_config
    from trainer.clip.backbone import load_backbone
    from trainer.clip.scheme import score_temperature
    from trainer.shared.config import ClipConfig

    default = score_temperature(ClipConfig().logit_scale, load_backbone(str(write_tiny_clip_config(tmp_path)), "none"))
    assert default == 100.0

    def first(s: Scores) -> torch.Tensor:
        return L.ranking_loss_first(s["w"], s["b"], s["t"], 0.9, 0.2)

    w, b = [-0.02], [0.03]
    for temperature, should_differ in ((default, True), (1.0, False)):
        g1 = prompt_gradient(first, temperature, w=w, b=b, t=[0.0])
        g2 = prompt_gradient(first, temperature, w=w, b=b, t=[-0.01])
        assert (not torch.allclose(g1, g2, atol=1e-9)) == should_differ, temperature

    def later(s: Scores) -> torch.Tensor:
        return L.ranking_loss_later(s["w"], s["b"], s["t"], s["prev"], 0.9, 0.2, 0.2)

    for temperature, should_differ in ((default, True), (1.0, False)):
        g1 = prompt_gradient(later, temperature, w=w, b=b, t=[0.0], prev=[0.01])
        g2 = prompt_gradient(later, temperature, w=w, b=b, t=[0.0], prev=[-0.005])
        g3 = prompt_gradient(later, temperature, w=w, b=b, t=[-0.01], prev=[0.01])
        assert (not torch.allclose(g1, g2, atol=1e-9)) == should_differ, temperature
        assert (not torch.allclose(g1, g3, atol=1e-9)) == should_differ, temperature
