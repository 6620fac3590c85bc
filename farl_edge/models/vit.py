"""FaRL image tower: OpenAI CLIP ViT with CLIP parameter names and QuickGELU.

Attention uses separate q/k/v projections at run time (ONNX Runtime fuses those into
its Attention op) while the state dict keeps CLIP's packed ``attn.in_proj_weight``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    """CLIP's activation; plain GELU silently gives wrong features with FaRL weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 for fp16 inputs (as CLIP does), cast back; other dtypes as they are."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype) if x.dtype == torch.float16 else super().forward(x)


class MultiheadSelfAttention(nn.Module):
    """Self-attention with CLIP's packed parameter names (``in_proj_weight``, ``out_proj``)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        wq, wk, wv = self.in_proj_weight.chunk(3, dim=0)
        bq, bk, bv = self.in_proj_bias.chunk(3, dim=0)
        head_dim = c // self.heads
        q = F.linear(x, wq, bq).reshape(b, n, self.heads, head_dim).transpose(1, 2)
        k = F.linear(x, wk, bk).reshape(b, n, self.heads, head_dim).transpose(1, 2)
        v = F.linear(x, wv, bv).reshape(b, n, self.heads, head_dim).transpose(1, 2)
        # Explicit matmul/softmax: exports to the pattern ORT's optimiser fuses.
        attn = (q * head_dim**-0.5) @ k.transpose(-2, -1)
        if attn_mask is not None:
            attn = attn + attn_mask
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.out_proj(out)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = LayerNorm(width)
        self.attn = MultiheadSelfAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, hidden), gelu=QuickGELU(), c_proj=nn.Linear(hidden, width))
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, grad_checkpointing: bool = False):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))
        self.grad_checkpointing = grad_checkpointing

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = self._run(block, x, attn_mask)
        return x

    def _run(self, block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            return torch.utils.checkpoint.checkpoint(block, x, attn_mask, use_reentrant=False)
        return block(x, attn_mask)


def resize_pos_embed(pos_embed: torch.Tensor, grid: int | tuple[int, int]) -> torch.Tensor:
    """Resize a (1 + g*g, C) position table bicubically to ``grid``, keeping the class row."""
    grid_hw = (grid, grid) if isinstance(grid, int) else tuple(grid)
    cls_row, patch_rows = pos_embed[:1], pos_embed[1:]
    old = int(round(patch_rows.shape[0] ** 0.5))
    if old * old != patch_rows.shape[0]:
        raise ValueError(f"position table has {patch_rows.shape[0]} patch rows, not a square grid")
    if (old, old) == grid_hw:
        return pos_embed
    c = patch_rows.shape[1]
    maps = patch_rows.float().reshape(1, old, old, c).permute(0, 3, 1, 2)
    maps = F.interpolate(maps, size=grid_hw, mode="bicubic", align_corners=False)
    patch_rows = maps.permute(0, 2, 3, 1).reshape(grid_hw[0] * grid_hw[1], c).to(pos_embed.dtype)
    return torch.cat([cls_row, patch_rows], dim=0)


class VisionTransformer(nn.Module):
    """CLIP's visual tower (``conv1``, ``class_embedding``, ``positional_embedding``, ...)."""

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        output_dim: int | None = 512,
    ):
        super().__init__()
        self.patch_size, self.width = patch_size, width
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        grid = image_size // patch_size
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim)) if output_dim else None

    @property
    def grid_size(self) -> int:
        return int(round((self.positional_embedding.shape[0] - 1) ** 0.5))

    @property
    def image_size(self) -> int:
        return self.grid_size * self.patch_size

    def set_image_size(self, image_size: int) -> None:
        """Resize position embeddings once, so the exported graph holds a fixed table."""
        if image_size % self.patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {self.patch_size}")
        with torch.no_grad():
            table = resize_pos_embed(self.positional_embedding.data, image_size // self.patch_size)
        self.positional_embedding = nn.Parameter(table)

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None):
        """Patch + class + position embedding. ``mask`` (B, N) bool swaps patches for ``mask_token``."""
        x = self.conv1(x)
        b, c, h, w = x.shape
        if h * w + 1 != self.positional_embedding.shape[0]:
            raise ValueError(
                f"input gives a {h}x{w} patch grid but the model is set for {self.grid_size}x{self.grid_size};"
                f" feed {self.image_size}px images or call set_image_size()"
            )
        x = x.flatten(2).transpose(1, 2)
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), mask_token.to(x.dtype).expand_as(x), x)
        cls = self.class_embedding.to(x.dtype).expand(b, 1, c)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def forward_intermediates(self, x: torch.Tensor, blocks: Sequence[int]) -> list[torch.Tensor]:
        """Outputs of the chosen blocks (0-based) as (B, C, H/patch, W/patch) maps, class token dropped."""
        wanted = sorted(set(int(i) for i in blocks))
        if not wanted or wanted[0] < 0 or wanted[-1] >= len(self.transformer.resblocks):
            raise ValueError(f"blocks {list(blocks)} out of range for {len(self.transformer.resblocks)} layers")
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.embed(x)
        taps: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.transformer.resblocks[: wanted[-1] + 1]):
            tokens = self.transformer._run(block, tokens, None)
            if i in wanted:
                taps[i] = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], self.width, h, w)
        return [taps[int(i)] for i in blocks]

    def encode_tokens(self, x: torch.Tensor, mask=None, mask_token=None) -> torch.Tensor:
        return self.transformer(self.embed(x, mask, mask_token))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image embedding: ``ln_post(cls) @ proj`` as in CLIP."""
        cls = self.ln_post(self.encode_tokens(x)[:, 0])
        return cls @ self.proj if self.proj is not None else cls
