"""FaRL downstream heads: multi-scale adapter over tapped ViT blocks, UPerHead, task outputs."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from farl_edge.registry import HeadCfg


class ConvBNReLU(nn.Sequential):
    """mmseg's ConvModule: conv without bias, BatchNorm, ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )


def _adaptive_pool_matrix(size_in: int, size_out: int, device, dtype) -> torch.Tensor:
    """(out, in) averaging matrix with exactly adaptive_avg_pool's bins."""
    m = torch.zeros(size_out, size_in, device=device, dtype=dtype)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)  # ceil
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """adaptive_avg_pool2d written as two matmuls: exports to ONNX for sizes that do not divide."""
    ph = _adaptive_pool_matrix(x.shape[-2], size, x.device, x.dtype)
    pw = _adaptive_pool_matrix(x.shape[-1], size, x.device, x.dtype)
    return ph @ x @ pw.t()


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class MultiScaleAdapter(nn.Module):
    """FaRL's fpn1..fpn4: tapped maps at 1/16 → 1/4, 1/8, 1/16, 1/32."""

    def __init__(self, width: int):
        super().__init__()
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(width, width, 2, stride=2), nn.BatchNorm2d(width), nn.GELU(),
            nn.ConvTranspose2d(width, width, 2, stride=2),
        )
        self.fpn2 = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(2, stride=2)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [op(f) for op, f in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), feats)]


class PyramidPooling(nn.Module):
    def __init__(self, cin: int, channels: int, scales: Sequence[int]):
        super().__init__()
        self.scales = tuple(scales)
        self.stages = nn.ModuleList(ConvBNReLU(cin, channels, 1) for _ in scales)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [resize_to(stage(adaptive_avg_pool(x, s)), x.shape[-2:]) for s, stage in zip(self.scales, self.stages)]


class UPerHead(nn.Module):
    """UPerNet decoder (mmseg layout): PPM on the coarsest level, FPN top-down, fusion at 1/4."""

    def __init__(self, in_channels: Sequence[int], channels: int, pool_scales=(1, 2, 3, 6)):
        super().__init__()
        self.psp = PyramidPooling(in_channels[-1], channels, pool_scales)
        self.bottleneck = ConvBNReLU(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        top = feats[-1]
        laterals.append(self.bottleneck(torch.cat([top, *self.psp(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_to(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [resize_to(o, size) for o in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))


class DenseHead(nn.Module):
    """Adapter + UPerHead + 1×1 classifier: per-pixel logits at 1/4 of the input."""

    def __init__(self, width: int, num_outputs: int, channels: int, pool_scales=(1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        self.adapter = MultiScaleAdapter(width)
        self.decoder = UPerHead([width] * 4, channels, pool_scales)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_outputs, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.decoder(self.adapter(feats))))


# FaRL's heatmap2points (farl/network/geometry.py) divides by the heatmap mass clamped at 1e-6.
HEATMAP_MASS_FLOOR = 1e-6


def soft_argmax(heatmaps: torch.Tensor) -> torch.Tensor:
    """FaRL's heatmap decode → (B, K, 2) in [0, 1], x then y.

    FaRL: ``Σ index · h / max(Σ h, 1e-6)`` in heatmap pixel indices. Ours is that plus 0.5 (pixel
    i spans [i, i+1), so its centre is i + 0.5), divided by the heatmap size: exactly FaRL's
    point + 0.5 px for every channel, also where the mass is below 1e-6.
    """
    h, w = heatmaps.shape[-2:]
    weights = heatmaps.flatten(2)
    mass = weights.sum(dim=-1, keepdim=True).clamp_min(HEATMAP_MASS_FLOOR)
    # The explicit casts are not no-ops for Core ML: its converter makes an arange int32 whatever
    # dtype it was given, and then refuses the matmul of fp32 weights with an int32 grid.
    ys = torch.arange(h, device=heatmaps.device).to(heatmaps.dtype)
    xs = torch.arange(w, device=heatmaps.device).to(heatmaps.dtype)
    # One (h*w, 2) grid and one matmul: every exporter takes it (Core ML's converter rejects the
    # rank-1 right operand of a matrix-vector product).
    grid = torch.stack([xs.repeat(h), ys.repeat_interleave(w)], dim=-1)
    size = torch.tensor([w, h], device=heatmaps.device, dtype=heatmaps.dtype)
    return ((weights @ grid) / mass + 0.5) / size


def build_head(cfg: HeadCfg | dict, width: int, num_outputs: int) -> nn.Module:
    """The head a model config's ``head`` section describes (defaults: :class:`~farl_edge.registry.HeadCfg`)."""
    cfg = HeadCfg.coerce(cfg)
    if cfg.type == "uper":
        return DenseHead(width, num_outputs, cfg.channels, cfg.pool_scales, cfg.dropout)
    from farl_edge.models import edge_heads  # light heads live in their own module

    return edge_heads.build(cfg.type, cfg, width, num_outputs)
