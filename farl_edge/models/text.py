"""CLIP text tower with CLIP's parameter names (top level in the checkpoint, as in CLIP)."""
from __future__ import annotations

import torch
from torch import nn

from farl_edge.models.vit import LayerNorm, Transformer


class TextTransformer(nn.Module):
    def __init__(self, width: int = 512, layers: int = 12, heads: int = 8, context_length: int = 77,
                 vocab_size: int = 49408, output_dim: int = 512):
        super().__init__()
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.transformer = Transformer(width, layers, heads)
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, output_dim) * width**-0.5)
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        x = self.transformer(x, self.attn_mask[:n, :n].to(x.dtype))
        x = self.ln_final(x)
        # CLIP takes the feature at the end-of-text token (the highest id in each row).
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return x @ self.text_projection
