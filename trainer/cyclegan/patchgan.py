"""The CycleGAN scheme's discriminator: a 70 x 70 PatchGAN judging overlapping patches of a frame.

The pix2pix/CycleGAN layout C64-C128-C256-C512: 4 x 4 convolutions, the first three with
stride 2, the fourth with stride 1, each but the first followed by instance normalisation,
all by LeakyReLU(0.2); a last 4 x 4 convolution gives one real/fake score per patch. Each
score sees a 70 x 70 window of the input (:func:`receptive_field` computes it from the
layers), so the discriminator judges local exposure and texture, not the whole frame.
``width`` scales every layer (64 is the published C64); a narrower one trains faster on a CPU.
"""

from __future__ import annotations

from torch import Tensor, nn

#: Kernel side of every convolution, and the padding that keeps the published output size.
KERNEL, PADDING = 4, 1
#: (channel multiple of ``width``, stride) of the four C-blocks: C64-C128-C256-C512.
BLOCKS = ((1, 2), (2, 2), (4, 2), (8, 1))
LEAKY_SLOPE = 0.2


class PatchDiscriminator(nn.Module):
    """One score per 70 x 70 patch: ``(B, 1, H, W)`` in, ``(B, 1, h, w)`` out (no sigmoid: least squares)."""

    def __init__(self, in_ch: int = 1, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_ch
        for index, (multiple, stride) in enumerate(BLOCKS):
            out = width * multiple
            first = index == 0
            # No bias where instance normalisation follows: the normalisation removes it.
            layers.append(nn.Conv2d(channels, out, KERNEL, stride=stride, padding=PADDING, bias=first))
            if not first:
                layers.append(nn.InstanceNorm2d(out))
            layers.append(nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
            channels = out
        layers.append(nn.Conv2d(channels, 1, KERNEL, stride=1, padding=PADDING))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.layers(x)
        return result


def receptive_field(model: nn.Module) -> int:
    """Side in input pixels of the window one output score sees, from the convolutions in order."""
    field, jump = 1, 1
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d):
            kernel, stride = layer.kernel_size[0], layer.stride[0]
            field += (kernel - 1) * jump
            jump *= stride
    return field
