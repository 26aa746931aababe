"""The training losses of the method (docs/method.md) as pure tensor functions, batched.

Conventions: ``text_features`` is (2, D) with row 0 the negative prompt and row 1 the
positive one; image features are (B, D); both unit-norm. A score ``S`` is the softmax
weight of the negative prompt, shape (B,). Every loss is a mean over the batch, so a
batch split over DDP processes averages to the loss of the whole batch.

Two choices fix what the numbers mean (made by the caller, :mod:`trainer.loop`, from
``[clip]`` in the config):

* **Temperature.** The cosines are multiplied by ``logit_scale`` before the softmax. The
  default is the CLIP's own temperature (``clip.logit_scale = "model"``, 100 for OpenAI's
  weights), as in the reference implementation: only then does S span most of [0, 1], so
  the margins m0 = 0.9 and m1 = m2 = 0.2 can be met and some hinges switch off. At 1 (the
  formula as printed, still this function's default) every hinge stays active and
  L_prompt1 collapses to ``2 (S(I_w) - S(I_b))`` plus a constant: the enhanced outputs get
  no weight in prompt refinement.
* **Feature scale.** The feature maps that :func:`feature_loss` compares are computed at
  the CLIP tower's input size (``clip.feature_size = "model"``: images resized to 224 for
  RN101, as the reference does), so level l sees structures of the size the layer weights
  alpha_l and gamma_l were chosen for; ``"train"`` uses the crop size (512 by default),
  where each level sees structures 2.3 times smaller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.prompts import NEGATIVE, POSITIVE


def pair_logits(image_features: Tensor, text_features: Tensor, logit_scale: float = 1.0) -> Tensor:
    """(B, 2) scaled cosine similarities to the negative and positive prompts."""
    return logit_scale * image_features.float() @ text_features.float().t()


def negative_score(logits: Tensor) -> Tensor:
    """S(I) = exp(cos_n) / (exp(cos_n) + exp(cos_p)), from :func:`pair_logits`."""
    return logits.softmax(dim=-1)[:, NEGATIVE]


def prompt_init_loss(abnormal_logits: Tensor, normal_logits: Tensor) -> Tensor:
    """Binary cross-entropy over the prompt pair: abnormal frames negative, normal frames positive."""
    logits = torch.cat([abnormal_logits, normal_logits])
    target = torch.cat(
        [
            torch.full((abnormal_logits.shape[0],), NEGATIVE, dtype=torch.long, device=logits.device),
            torch.full((normal_logits.shape[0],), POSITIVE, dtype=torch.long, device=logits.device),
        ]
    )
    return F.cross_entropy(logits, target)


def ranking_loss_first(s_normal: Tensor, s_abnormal: Tensor, s_output: Tensor, m0: float, m1: float) -> Tensor:
    """L_prompt1: well exposed below enhanced below abnormal, with margins m0 and m1."""
    return (
        F.relu(s_normal - s_abnormal + m0) + F.relu(s_output - s_abnormal + m0) + F.relu(s_normal - s_output + m1)
    ).mean()


def ranking_loss_later(
    s_normal: Tensor, s_abnormal: Tensor, s_output: Tensor, s_previous: Tensor, m0: float, m1: float, m2: float
) -> Tensor:
    """L_prompt2: as L_prompt1, the previous round's outputs I_{t-1} ranked above the current ones."""
    return (
        F.relu(s_normal - s_abnormal + m0)
        + F.relu(s_previous - s_abnormal + m0)
        + F.relu(s_normal - s_output + m1)
        + F.relu(s_output - s_previous + m2)
    ).mean()


def clip_loss(s_output: Tensor) -> Tensor:
    """L_CLIP = S(I_t): low when CLIP finds the output well exposed."""
    return s_output.mean()


def feature_loss(outputs: list[Tensor], targets: list[Tensor], weights: list[float]) -> Tensor:
    """sum_l w_l * mean((Phi^l(out) - Phi^l(target))^2); levels with weight 0 are skipped."""
    total = outputs[0].new_zeros((), dtype=torch.float32)
    for output, target, weight in zip(outputs, targets, weights, strict=False):
        if weight:
            total = total + weight * F.mse_loss(output.float(), target.float().detach())
    return total


def deepest_level(*weight_lists: list[float]) -> int:
    """How many feature levels a set of weights needs (the deepest non-zero one, plus one)."""
    used = [i for weights in weight_lists for i, w in enumerate(weights) if w]
    return max(used) + 1 if used else 0
