"""The enhancer as every training scheme starts it (the CLIP scheme, the CycleGAN scheme, the oracle)."""

from __future__ import annotations

import torch

from drdaemon.model.network import Enhancer


def start_near_identity(enhancer: Enhancer, weight_scale: float = 0.1) -> Enhancer:
    """Initialise the illumination head so that L is about 1 and the first output is the input.

    With PyTorch's default initialisation the head's final ReLU gives L close to 0 on much of
    the frame, so ``x / (L + eps)`` saturates, the clamp to [0, 1] passes no gradient and the
    enhancer never starts learning. A bias of 1 on the last convolution (its weights scaled
    down) starts from the identity, which the self-reconstruction warm-up then refines.
    """
    head = enhancer.head.conv
    with torch.no_grad():
        head.weight.mul_(weight_scale)
        if head.bias is not None:
            head.bias.fill_(1.0)
    return enhancer
