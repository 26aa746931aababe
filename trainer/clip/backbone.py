"""The frozen CLIP model and the three views of it the losses need.

* :meth:`ClipBackbone.feature_maps`: the ResNet visual tower's maps at levels 0..4 (0 is the
  stem's output after its average pool, 1..4 the four residual stages), at the input's own
  size or resized to a given one (the tower's input size by default in training).
* :meth:`ClipBackbone.image_features`: the image embedding, the image resized inside the
  graph to the tower's input size.
* :meth:`ClipBackbone.encode_prompts`: the text transformer run on learned token embeddings.

Gray images in ``[0, 1]`` are replicated to 3 channels and normalised with CLIP's mean and
std here, so every caller hands over the enhancer's own tensors. The parameters never get
gradients, the model stays in eval mode (its BatchNorms keep their running statistics), and
gradients still flow through the image tower to the enhancer's output.

Loading the model and its weights is :mod:`trainer.shared.clip_weights`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.shared.clip_weights import ClipSource, ClipUnavailable, build_clip

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: The score temperature of a randomly initialised CLIP: the value trained CLIPs reach (OpenAI's
#: weights hold exactly 100); open_clip's initial 1/0.07 is only a starting point of training.
UNTRAINED_TEMPERATURE = 100.0


def image_size_of(visual: nn.Module) -> tuple[int, int]:
    size = visual.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


class ClipBackbone(nn.Module):
    """The frozen CLIP and the views of it the trainer needs (see the module docstring)."""

    def __init__(self, clip: nn.Module, source: ClipSource) -> None:
        super().__init__()
        from open_clip.modified_resnet import ModifiedResNet

        if not isinstance(clip.visual, ModifiedResNet):
            raise ClipUnavailable(
                f"{source.model}: the visual tower is {type(clip.visual).__name__}, not a ModifiedResNet"
            )
        self.clip = clip.requires_grad_(False).eval()
        self.source = source
        self.image_size = image_size_of(clip.visual)
        self.context_length = int(clip.context_length)
        self.register_buffer("mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ClipBackbone:
        return super().train(False)  # frozen: BatchNorm must keep using its running statistics

    def _normalise(self, gray: Tensor, size: tuple[int, int] | None) -> Tensor:
        x = gray.expand(-1, 3, -1, -1) if gray.shape[1] == 1 else gray
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def own_temperature(self) -> float:
        """The CLIP's own temperature on cosine similarities, ``logit_scale.exp()`` of its weights."""
        if self.source.checkpoint is None:
            return UNTRAINED_TEMPERATURE
        return float(self.clip.logit_scale.detach().float().exp())

    def feature_maps(self, gray: Tensor, levels: int = 5, size: tuple[int, int] | None = None) -> list[Tensor]:
        """Maps at levels 0..levels-1 of the visual tower, the image first resized to ``size``
        (antialiased bilinear, in the graph) when one is given, else at its own size."""
        visual = self.clip.visual
        x = visual.stem(self._normalise(gray, size))
        maps = [x]
        for stage in (visual.layer1, visual.layer2, visual.layer3, visual.layer4)[: levels - 1]:
            x = stage(x)
            maps.append(x)
        return maps

    def image_features(self, gray: Tensor) -> Tensor:
        """Unit-norm image embeddings, the image resized to the tower's input size in the graph."""
        return F.normalize(self.clip.visual(self._normalise(gray, self.image_size)), dim=-1)

    def token_embeddings(self, token_ids: Tensor) -> Tensor:
        return self.clip.token_embedding(token_ids)

    @property
    def text_width(self) -> int:
        return int(self.clip.token_embedding.embedding_dim)

    def encode_prompts(self, embeddings: Tensor, eot_index: Tensor) -> Tensor:
        """Unit-norm text features of token embeddings (P, L, W), pooled at each end-of-text token."""
        clip = self.clip
        x = embeddings + clip.positional_embedding.to(embeddings.dtype)
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]
        projection = clip.text_projection
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
        return F.normalize(x, dim=-1)


def load_backbone(model: str, weights: str, cache_dir: str | None = None) -> ClipBackbone:
    clip, source = build_clip(model, weights, cache_dir)
    return ClipBackbone(clip, source)
