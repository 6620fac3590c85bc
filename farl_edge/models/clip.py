"""FaRL image-text model (pre-training and zero-shot), state dict in the official FaRL layout.

Keys: ``visual.*`` image tower, CLIP text keys at top level, ``logit_scale``; with ``mim=True``
also ``visual.mask_token``, ``visual.lm_transformer.*``, ``visual.ln_lm.*``, ``visual.lm_head.*``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from farl_edge.models.text import TextTransformer
from farl_edge.models.vit import LayerNorm, Transformer, VisionTransformer
from farl_edge.registry import ModelConfig

MIM_LM_LAYERS = 1  # default depth of FaRL's extra "small transformer" (never published): files say theirs


class MaskedVisionTransformer(VisionTransformer):
    """Image tower plus FaRL's masked-image-modelling branch (training only)."""

    def __init__(self, *args, mim_vocab_size: int = 8192, mim_layers: int = MIM_LM_LAYERS, **kwargs):
        super().__init__(*args, **kwargs)
        heads = self.transformer.resblocks[0].attn.heads
        # Shape (width,) as in FaRL's VisualTransformer, so official checkpoints load strictly.
        self.mask_token = nn.Parameter(torch.zeros(self.width))
        self.lm_transformer = Transformer(self.width, mim_layers, heads)
        self.ln_lm = LayerNorm(self.width)
        self.lm_head = nn.Linear(self.width, mim_vocab_size)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward_mim(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predictions (B, N, vocab) for every patch of the masked copy; the loss picks masked ones."""
        tokens = self.encode_tokens(x, mask=mask, mask_token=self.mask_token)
        return self.lm_head(self.ln_lm(self.lm_transformer(tokens)))[:, 1:]


class FaRLClip(nn.Module):
    def __init__(self, cfg: ModelConfig, mim: bool = False, mim_vocab_size: int = 8192, image_size: int | None = None,
                 mim_layers: int = MIM_LM_LAYERS):
        super().__init__()
        if not cfg.text:
            raise ValueError(f"model {cfg.name!r} has no text tower; use a backbone config such as farl-b16-224")
        v, t = cfg.vision, cfg.text
        embed_dim = v.output_dim
        vis_kwargs = dict(image_size=image_size or cfg.input_size, patch_size=v.patch_size, width=v.width,
                          layers=v.layers, heads=v.heads, output_dim=embed_dim)
        self.visual = (MaskedVisionTransformer(**vis_kwargs, mim_vocab_size=mim_vocab_size, mim_layers=mim_layers)
                       if mim else VisionTransformer(**vis_kwargs))
        text = TextTransformer(t.width, t.layers, t.heads, t.context_length, t.vocab_size, embed_dim)
        # CLIP keeps the text tower's parameters at the top level of the state dict.
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.transformer = text.transformer
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.register_buffer("attn_mask", text.attn_mask, persistent=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``images``: RGB in [0, 1]."""
        feats = self.visual((images - self.mean) / self.std)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        # Same attribute names as TextTransformer, so its forward applies unchanged.
        x = TextTransformer.forward(self, tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        """Returns (image→text logits (B, B), text→image logits (B, B))."""
        img, txt = self.encode_image(images), self.encode_text(tokens)
        scale = self.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.t()
        return logits, logits.t()

