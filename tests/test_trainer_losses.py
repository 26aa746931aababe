"""The losses of docs/method.md against values worked out by hand."""

import math

import pytest
import torch

from trainer import losses as L


def test_score_is_the_softmax_weight_of_the_negative_prompt():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # row 0 negative, row 1 positive
    images = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    s = L.negative_score(L.pair_logits(images, text))
    # image 0: cos_n = 1, cos_p = 0 -> e / (e + 1); image 1: cos_n = .6, cos_p = .8
    expected = [math.e / (math.e + 1), math.exp(0.6) / (math.exp(0.6) + math.exp(0.8))]
    assert s.tolist() == pytest.approx(expected, rel=1e-6)
    scaled = L.negative_score(L.pair_logits(images, text, logit_scale=100.0))
    assert scaled[0].item() == pytest.approx(1 / (1 + math.exp(-100)), rel=1e-6)


def test_prompt_init_loss_is_binary_cross_entropy_over_the_pair():
    abnormal = torch.tensor([[0.5, 0.1]])  # logits (negative, positive)
    normal = torch.tensor([[0.2, 0.7]])
    # abnormal should be negative: -log softmax[0]; normal positive: -log softmax[1]
    loss_b = -math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(0.1)))
    loss_w = -math.log(math.exp(0.7) / (math.exp(0.2) + math.exp(0.7)))
    assert L.prompt_init_loss(abnormal, normal).item() == pytest.approx((loss_b + loss_w) / 2, rel=1e-6)


def test_first_ranking_loss_hinges():
    s_w, s_b, s_t = torch.tensor([0.2, 0.1]), torch.tensor([0.8, 0.9]), torch.tensor([0.5, 0.05])
    m0, m1 = 0.9, 0.2
    # sample 0: max(0,.2-.8+.9)=.3, max(0,.5-.8+.9)=.6, max(0,.2-.5+.2)=0        -> .9
    # sample 1: max(0,.1-.9+.9)=.1, max(0,.05-.9+.9)=.05, max(0,.1-.05+.2)=.25   -> .4
    assert L.ranking_loss_first(s_w, s_b, s_t, m0, m1).item() == pytest.approx(0.65, abs=1e-6)


def test_later_ranking_loss_uses_previous_outputs():
    s_w, s_b, s_t, s_prev = (torch.tensor([x]) for x in (0.2, 0.8, 0.4, 0.3))
    # max(0,.2-.8+.9)=.3 + max(0,.3-.8+.9)=.4 + max(0,.2-.4+.2)=0 + max(0,.4-.3+.2)=.3
    loss = L.ranking_loss_later(s_w, s_b, s_t, s_prev, 0.9, 0.2, 0.2)
    assert loss.item() == pytest.approx(1.0, abs=1e-6)
    # all orderings satisfied with room to spare -> zero
    zero = L.ranking_loss_later(*(torch.tensor([x]) for x in (0.0, 1.0, 0.05, 0.3)), 0.5, 0.01, 0.01)
    assert zero.item() == 0.0


def test_feature_loss_weights_levels_and_skips_zero_weights():
    outputs = [torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 1, 1), torch.full((1, 1, 1, 1), float("nan"))]
    targets = [torch.ones(1, 1, 2, 2), torch.full((1, 2, 1, 1), 3.0), torch.zeros(1, 1, 1, 1)]
    # level 0: mse 1, weight .5; level 1: mse 9, weight 2; level 2: weight 0 (its NaN never enters)
    assert L.feature_loss(outputs, targets, [0.5, 2.0, 0.0]).item() == pytest.approx(18.5)


def test_feature_loss_gradients_reach_outputs_only():
    out = torch.zeros(2, 3, 4, 4, requires_grad=True)
    target = torch.ones(2, 3, 4, 4, requires_grad=True)
    L.feature_loss([out], [target], [1.0]).backward()
    assert out.grad is not None and target.grad is None


def test_clip_loss_and_levels():
    assert L.clip_loss(torch.tensor([0.2, 0.4])).item() == pytest.approx(0.3)
    assert L.deepest_level([1, 1, 1, 1, 0.5], [1, 1.5, 1.5, 1, 0]) == 5
    assert L.deepest_level([1, 0, 0, 0, 0], [0, 0, 2, 0, 0]) == 3
