"""All-MLP edge head (SegFormer style): the cheapest head design measured for the edge variants.

``edge``: each tapped block projected by a 1×1 conv and fused at 1/16 (ViT taps share one
resolution, so FaRL's adapter pyramid is skipped), then learned 2× upsampling stages with
depthwise-separable 3×3 refinement down to the output stride (1/4 for parsing logits; 1/8 is
enough for heatmaps decoded by soft-argmax).

The registry's ``-edge`` models use a slim UPerHead instead (``"type": "uper"`` with fewer
channels, started from the teacher by ``farl_edge.train.prune``): at ~0.1 × the UPerHead's GMACs
this head, distilled, stayed far from the teacher (small models: NME_io 8.60 vs 4.89, F1 46.0 vs
59.8), so it is kept as a selectable design for a stricter budget, not shipped.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from farl_edge.errors import UserError


class SeparableConv(nn.Sequential):
    """Depthwise 3×3 + pointwise 1×1, BN, ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


class UpStage(nn.Sequential):
    """Learned 2× upsampling (transposed 2×2 conv) followed by separable refinement."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.ConvTranspose2d(cin, cout, 2, stride=2), nn.BatchNorm2d(cout), nn.GELU(), SeparableConv(cout, cout))


class EdgeHead(nn.Module):
    def __init__(self, width: int, num_outputs: int, channels: int = 128, out_stride: int = 4, num_taps: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        if out_stride not in (4, 8, 16):
            raise UserError(f"edge head out_stride must be 4, 8 or 16, not {out_stride}")
        self.proj = nn.ModuleList(nn.Conv2d(width, channels, 1) for _ in range(num_taps))
        self.fuse = nn.Sequential(nn.Conv2d(num_taps * channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU(inplace=True))
        stages, c = [], channels
        for _ in range(int(math.log2(16 // out_stride))):
            stages.append(UpStage(c, max(c // 2, 32)))
            c = max(c // 2, 32)
        self.up = nn.Sequential(*stages)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(c, num_outputs, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.fuse(torch.cat([p(f) for p, f in zip(self.proj, feats)], dim=1))
        return self.classifier(self.dropout(self.up(x)))


def build(kind: str, cfg: dict, width: int, num_outputs: int) -> nn.Module:
    if kind == "edge":
        return EdgeHead(width, num_outputs, cfg.get("channels", 128), cfg.get("out_stride", 4), dropout=cfg.get("dropout", 0.1))
    raise UserError(f"unknown head type {kind!r}; known: uper, edge")
