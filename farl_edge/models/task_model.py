"""FaRL task model: input normalisation + ViT backbone + task head, as one exportable module.

Input: RGB float in [0, 1], (B, 3, C, C) with C = ``cfg.crop_size``. Under FaRL's protocol the crop
(512) is resized bilinearly to the network's S = ``cfg.input_size`` (448) first, inside the graph, as
FaRL's backbone does; otherwise C = S. Outputs:
- backbone:  ``embedding`` (B, D)
- parsing:   ``logits`` (B, C, S/4, S/4)
- alignment: ``landmarks`` (B, K, 2) in crop pixels (x, y), ``heatmaps`` (B, K, S/4, S/4) in [0, 1]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from farl_edge.models.heads import build_head, soft_argmax
from farl_edge.models.vit import VisionTransformer
from farl_edge.registry import ModelConfig


def build_backbone(cfg: ModelConfig) -> VisionTransformer:
    v = cfg.vision
    return VisionTransformer(
        image_size=cfg.input_size, patch_size=v.patch_size, width=v.width, layers=v.layers,
        heads=v.heads, output_dim=v.output_dim,
    )


class FaRLModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)
        self.backbone = build_backbone(cfg)
        self.taps = list(cfg.taps)
        self.head = build_head(cfg.head, cfg.vision.width, cfg.num_outputs) if cfg.task != "backbone" else None

    @property
    def output_names(self) -> list[str]:
        return {"backbone": ["embedding"], "parsing": ["logits"], "alignment": ["landmarks", "heatmaps"]}[self.cfg.task]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.crop_size != self.cfg.input_size:  # FaRL's protocol: resize before normalising
            s = self.cfg.input_size
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone.forward_intermediates(self.normalize(x), self.taps)

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw head output (class logits or heatmap logits at 1/4), what the losses use."""
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor):
        if self.cfg.task == "backbone":
            return self.backbone(self.normalize(x))
        out = self.head_logits(x)
        if self.cfg.task == "parsing":
            return out
        heatmaps = out.float().sigmoid()
        landmarks = soft_argmax(heatmaps) * x.shape[-1]
        return landmarks, heatmaps
