"""Multiply-accumulate counts measured from the model (PyTorch's FLOP counter), never hard-coded."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: torch.nn.Module, input_size: int, batch: int = 1) -> dict[str, float]:
    """GMACs of one forward at ``input_size`` (FLOPs / 2), total and per top-level part."""
    x = torch.rand(batch, 3, input_size, input_size)
    counter = FlopCounterMode(display=False, depth=2)
    was_training = model.training
    model.eval()
    with torch.no_grad(), counter:
        model(x)
    model.train(was_training)
    per_module = counter.get_flop_counts()
    total = counter.get_total_flops() / 2 / 1e9
    parts = {"total": total}
    head_key = f"{type(model).__name__}.head"
    if head_key in per_module:
        parts["head"] = sum(per_module[head_key].values()) / 2 / 1e9
        # The backbone runs through forward_intermediates (no module call to attribute), so it is the rest.
        parts["backbone"] = total - parts["head"]
    return parts
