"""The history buffer of generated images that a CycleGAN discriminator is trained on.

Training a discriminator only on the generator's latest outputs lets the two chase each
other in circles; showing it a mix of the latest and of earlier outputs damps that. Once
the buffer holds ``size`` images, each new image is, with probability one half, swapped for
a random stored one (the stored one goes to the discriminator, the new one into the
buffer), else passed through.

The random draws are a function of ``(seed, stream, iteration)``, not of a generator's
state, so the buffer's contents are all an exact resume needs; under ``torchrun`` every
process queries the same global batch and so keeps the same buffer.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class HistoryBuffer:
    """Up to ``size`` earlier generated images, detached; ``size = 0`` passes every image through."""

    def __init__(self, size: int, seed: int, stream: int) -> None:
        self.size, self.seed, self.stream = size, seed, stream
        self.images: list[Tensor] = []

    def query(self, generated: Tensor, iteration: int) -> Tensor:
        """The images to show the discriminator for this iteration's ``generated`` batch."""
        generated = generated.detach()
        if self.size == 0:
            return generated
        rng = np.random.default_rng([self.seed, self.stream, iteration])
        shown = []
        for image in generated:
            if len(self.images) < self.size:
                self.images.append(image.clone())
                shown.append(image)
            elif rng.random() < 0.5:
                slot = int(rng.integers(0, self.size))
                shown.append(self.images[slot])
                self.images[slot] = image.clone()
            else:
                shown.append(image)
        return torch.stack(shown)

    def state_dict(self) -> dict[str, Tensor]:
        stored = torch.stack(self.images).cpu() if self.images else torch.empty(0)
        return {"images": stored}

    def load_state_dict(self, state: dict[str, Tensor], device: torch.device) -> None:
        self.images = [image.to(device) for image in state["images"]]
