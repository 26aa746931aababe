"""The training losses of the method (docs/method.md) as pure tensor functions, batched.

Conventions: ``text_features`` is (2, D) with row 0 the negative prompt and row 1 the
positive one; image features are (B, D); both unit-norm. A score ``S`` is the softmax
weight of the negative prompt, shape (B,). Every loss is a mean over the batch, so a
batch split over DDP processes averages to the loss of the whole batch.

Two choices fix what the numbers mean (made by the caller, :mod:`trainer.clip.scheme`, from
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

Two more make the numbers carry over from one CLIP to another (``[loss]``):

* **Feature normalisation** (``loss.feature_norm``). With ``"none"`` (the published form)
  each level's term is a raw mean squared difference, so its size is whatever the CLIP's
  activations happen to be: about 1e-4 for a randomly initialised tiny ResNet, about 1000
  times more for one trained on radiographs. beta, omega, alpha and gamma were chosen for
  OpenAI's RN101 and weigh something else entirely on any other CLIP. ``"input"`` divides
  each level's term by the mean square of the *input frame's* features at that level
  (:func:`feature_energy`, no gradient): every term becomes a relative error, 0 for the
  identity and 1 for an output whose features differ from the input's by as much as the
  input's features are large, the same for every CLIP.
* **Prompt-initialisation confidence** (``loss.prompt_init_confidence``). Plain
  cross-entropy keeps pushing until the score saturates (S of 1e-22 at temperature 100):
  then L_CLIP sits at exactly 0 or 1 and gives the enhancer no gradient. A sample whose
  score is already on the right side by ``confidence`` (S >= 0.95 for an abnormal frame,
  S <= 0.05 for a normal one by default) stops pulling; 1.0 is the published form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.clip.prompts import NEGATIVE, POSITIVE


def pair_logits(image_features: Tensor, text_features: Tensor, logit_scale: float = 1.0) -> Tensor:
    """(B, 2) scaled cosine similarities to the negative and positive prompts."""
    return logit_scale * image_features.float() @ text_features.float().t()


def negative_score(logits: Tensor) -> Tensor:
    """S(I) = exp(cos_n) / (exp(cos_n) + exp(cos_p)), from :func:`pair_logits`."""
    return logits.softmax(dim=-1)[:, NEGATIVE]


def prompt_init_loss(abnormal_logits: Tensor, normal_logits: Tensor, confidence: float = 1.0) -> Tensor:
    """Binary cross-entropy over the prompt pair: abnormal frames negative, normal frames positive.

    Samples already classified with probability ``confidence`` or more add nothing (the mean
    still counts them, so a batch split over DDP processes averages as a whole batch would).
    """
    logits = torch.cat([abnormal_logits, normal_logits])
    target = torch.cat(
        [
            torch.full((abnormal_logits.shape[0],), NEGATIVE, dtype=torch.long, device=logits.device),
            torch.full((normal_logits.shape[0],), POSITIVE, dtype=torch.long, device=logits.device),
        ]
    )
    per_sample = F.cross_entropy(logits, target, reduction="none")
    if confidence < 1.0:
        right = logits.softmax(dim=-1).gather(1, target[:, None])[:, 0]
        per_sample = torch.where(right.detach() < confidence, per_sample, torch.zeros_like(per_sample))
    return per_sample.mean()


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


def feature_energy(maps: list[Tensor], floor: float = 1e-12) -> list[Tensor]:
    """Mean square of each level's feature map (the ``"input"`` normaliser), without gradient."""
    return [m.detach().float().square().mean().clamp_min(floor) for m in maps]


def feature_loss(
    outputs: list[Tensor], targets: list[Tensor], weights: list[float], energies: list[Tensor] | None = None
) -> Tensor:
    """sum_l w_l * mean((Phi^l(out) - Phi^l(target))^2) [/ energy_l]; levels with weight 0 are skipped."""
    total = outputs[0].new_zeros((), dtype=torch.float32)
    for level, (output, target, weight) in enumerate(zip(outputs, targets, weights, strict=False)):
        if weight:
            term = F.mse_loss(output.float(), target.float().detach())
            total = total + weight * (term / energies[level] if energies is not None else term)
    return total


def deepest_level(*weight_lists: list[float]) -> int:
    """How many feature levels a set of weights needs (the deepest non-zero one, plus one)."""
    used = [i for weights in weight_lists for i, w in enumerate(weights) if w]
    return max(used) + 1 if used else 0
