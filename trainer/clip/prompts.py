"""The learnable prompt pair (CoOp style): N token embeddings each for "badly" and "well" exposed.

Each prompt is the token sequence ``<start> X X ... X . <end>`` whose N placeholder
embeddings are replaced by learned vectors; the start, the full stop, the end token and the
padding keep CLIP's own (frozen) embeddings. Both prompts run through the frozen text
transformer in one batch of two, pooled at the end-of-text token. Row 0 is the negative
(abnormally exposed) prompt T_n, row 1 the positive (well exposed) prompt T_p.

The text features depend on the prompts only, so callers compute them once per prompt update
(the enhancer phases reuse one computation for every image).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainer.clip.backbone import ClipBackbone

NEGATIVE, POSITIVE = 0, 1


def prompt_token_ids(n_tokens: int, context_length: int) -> Tensor:
    """Token ids of ``X X ... X .`` with start and end tokens, padded to the context length."""
    from open_clip.tokenizer import tokenize

    text = " ".join(["X"] * n_tokens) + "."
    ids = tokenize([text, text], context_length=context_length)
    if int(ids[0].argmax()) != n_tokens + 2:  # start, N placeholders, ".", then the end token
        raise ValueError(f"{n_tokens} prompt tokens do not fit a context of {context_length}")
    return ids


class PromptPair(nn.Module):
    """Learned context vectors ``ctx`` of shape (2, N, width); everything else is frozen."""

    def __init__(self, backbone: ClipBackbone, n_tokens: int = 16, init_std: float = 0.02) -> None:
        super().__init__()
        ids = prompt_token_ids(n_tokens, backbone.context_length)
        with torch.no_grad():
            embedded = backbone.token_embeddings(ids.to(backbone.clip.token_embedding.weight.device))
        self.ctx = nn.Parameter(torch.randn(2, n_tokens, backbone.text_width) * init_std)
        # Derived from the frozen CLIP, so rebuilt rather than saved with the prompts.
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", embedded[:, 1 + n_tokens :].clone(), persistent=False)
        self.register_buffer("eot_index", ids.argmax(dim=-1), persistent=False)

    def forward(self, backbone: ClipBackbone) -> Tensor:
        """Unit-norm text features (2, D): row 0 negative, row 1 positive."""
        embeddings = torch.cat([self.prefix, self.ctx.to(self.prefix.dtype), self.suffix], dim=1)
        return backbone.encode_prompts(embeddings, self.eot_index)
