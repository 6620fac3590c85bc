"""Start a slim UPerHead student from its full-width teacher: keep the most important decoder channels.

The adapter (fpn1..fpn4) does not depend on the decoder width, so it is copied as is. Every decoder
layer shares one channel space (the FPN adds laterals across levels), so one index set, ranked by
the summed |BatchNorm γ| of all decoder layers, is sliced out of every weight that touches it.
"""
from __future__ import annotations

import torch
from torch import nn

from farl_edge.models.heads import DenseHead


def _decoder_norms(head: DenseHead) -> list[nn.BatchNorm2d]:
    d = head.decoder
    blocks = [*d.psp.stages, d.bottleneck, *d.lateral_convs, *d.fpn_convs, d.fpn_bottleneck]
    return [block[1] for block in blocks]


def channel_ranking(head: DenseHead) -> torch.Tensor:
    """Decoder channels, most important first (summed |γ| over every BatchNorm of the decoder)."""
    score = sum(bn.weight.detach().abs() for bn in _decoder_norms(head))
    return torch.argsort(score, descending=True)


def _copy_conv_bn(src: nn.Sequential, dst: nn.Sequential, out_idx: torch.Tensor, in_idx: torch.Tensor | None) -> None:
    weight = src[0].weight.detach()[out_idx]
    dst[0].weight.copy_(weight if in_idx is None else weight[:, in_idx])
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst[1], name).copy_(getattr(src[1], name).detach()[out_idx])
    dst[1].num_batches_tracked.copy_(src[1].num_batches_tracked)


@torch.no_grad()
def init_slim_head_from_teacher(student: nn.Module, teacher: nn.Module) -> torch.Tensor:
    """Copy ``teacher``'s adapter and its top-ranked decoder channels into the narrower ``student``.

    Both must be ``DenseHead`` (adapter + UPerHead) over the same backbone width and outputs; the
    student's decoder may not be wider. Returns the kept channel indices (teacher numbering).
    """
    if not isinstance(student, DenseHead) or not isinstance(teacher, DenseHead):
        raise TypeError("channel-pruned initialisation needs UPerHead heads on both sides "
                        f"(got {type(student).__name__} from {type(teacher).__name__}); "
                        "set init_head_from_teacher to false for other head types")
    c_t, c_s = teacher.conv_seg.in_channels, student.conv_seg.in_channels
    if c_s > c_t or student.conv_seg.out_channels != teacher.conv_seg.out_channels:
        raise ValueError(f"student head ({c_s} channels, {student.conv_seg.out_channels} outputs) cannot be cut from "
                         f"teacher head ({c_t} channels, {teacher.conv_seg.out_channels} outputs)")
    student.adapter.load_state_dict(teacher.adapter.state_dict())
    keep = torch.sort(channel_ranking(teacher)[:c_s]).values
    t, s = teacher.decoder, student.decoder
    width = t.psp.stages[0][0].in_channels
    for src, dst in zip(t.psp.stages, s.psp.stages):
        _copy_conv_bn(src, dst, keep, None)
    # bottleneck input: the coarsest tap (all of it), then each pooling branch's channels.
    bottleneck_in = torch.cat([torch.arange(width), *(width + i * c_t + keep for i in range(len(t.psp.stages)))])
    _copy_conv_bn(t.bottleneck, s.bottleneck, keep, bottleneck_in)
    for src, dst in zip(t.lateral_convs, s.lateral_convs):
        _copy_conv_bn(src, dst, keep, None)
    for src, dst in zip(t.fpn_convs, s.fpn_convs):
        _copy_conv_bn(src, dst, keep, keep)
    levels = len(t.lateral_convs) + 1
    _copy_conv_bn(t.fpn_bottleneck, s.fpn_bottleneck, keep, torch.cat([i * c_t + keep for i in range(levels)]))
    student.conv_seg.weight.copy_(teacher.conv_seg.weight.detach()[:, keep])
    student.conv_seg.bias.copy_(teacher.conv_seg.bias.detach())
    return keep
