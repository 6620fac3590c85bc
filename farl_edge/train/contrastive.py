"""CLIP image-text contrastive loss with features gathered across ranks (gradient kept).

Every rank scores its own B images against the texts of all ranks (and its own B texts against
all images): the "local loss" of open_clip. ``all_gather_with_grad`` sends the gradient of the
gathered copies back to the rank that owns them (summed), and DDP then averages the parameter
gradients over ranks, so the update equals the gradient of the mean of the per-rank losses, which
is the loss over the global batch of ``world_size * B`` pairs.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from farl_edge.train.distributed import all_gather_with_grad

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learnable temperature at 100


def clamp_logit_scale_(logit_scale: torch.nn.Parameter) -> None:
    """In-place clamp after each optimiser step, as CLIP does: exp(scale) stays in [1, 100]."""
    with torch.no_grad():
        logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                     gather: bool = True, has_text: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Symmetric InfoNCE over the global batch.

    ``image_features``, ``text_features``: (B, D) L2-normalised features of this rank's pairs.
    ``logit_scale``: the log temperature parameter (``exp`` is clamped at 100).
    ``has_text``: (B,) bool, False for images without caption (masked image modelling only): they
    are neither anchors nor candidates; a rank without any caption contributes a zero loss.
    Returns (loss, stats) with stats ``acc_i2t`` / ``acc_t2i`` (top-1 over the global batch).
    """
    img, txt = image_features.float(), text_features.float()
    b = img.shape[0]
    valid = torch.ones(b, dtype=torch.bool, device=img.device) if has_text is None else has_text.to(img.device).bool()
    all_img = all_gather_with_grad(img) if gather else img
    all_txt = all_gather_with_grad(txt) if gather else txt
    all_valid = all_gather_with_grad(valid.float()).bool() if gather and all_img.shape[0] != b else valid
    scale = logit_scale.float().exp().clamp(max=100.0)
    logits_i2t = scale * img @ all_txt.t()  # (B, world*B)
    logits_t2i = scale * txt @ all_img.t()
    offset = _rank() * b if all_img.shape[0] != b else 0
    labels = torch.arange(b, device=img.device) + offset
    if not bool(valid.any()):
        zero = 0.0 * (logits_i2t.sum() + logits_t2i.sum())  # keeps every parameter in the graph (DDP)
        return zero, {"acc_i2t": float("nan"), "acc_t2i": float("nan")}
    blocked = ~all_valid
    logits_i2t = logits_i2t.masked_fill(blocked[None, :], float("-inf"))[valid]
    logits_t2i = logits_t2i.masked_fill(blocked[None, :], float("-inf"))[valid]
    labels = labels[valid]
    loss = 0.5 * (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels))
    with torch.no_grad():
        stats = {
            "acc_i2t": (logits_i2t.argmax(-1) == labels).float().mean().item(),
            "acc_t2i": (logits_t2i.argmax(-1) == labels).float().mean().item(),
        }
    return loss, stats
