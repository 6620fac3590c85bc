"""Fine-tuning losses (FaRL): per-pixel cross-entropy; L1 on normalised coordinates + heatmap BCE."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from farl_edge.models.heads import soft_argmax


def parsing_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits at 1/4 are upsampled to the label size, as FaRL trains."""
    logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, labels)


def gaussian_heatmaps(points: torch.Tensor, size: int, hm_size: int, sigma: float) -> torch.Tensor:
    """(B, K, 2) input-pixel points → (B, K, h, h) Gaussian targets centred on the points."""
    centres = (torch.arange(hm_size, device=points.device, dtype=torch.float32) + 0.5) / hm_size
    p = points / size
    dx = centres.view(1, 1, 1, -1) - p[..., 0, None, None]
    dy = centres.view(1, 1, -1, 1) - p[..., 1, None, None]
    return torch.exp(-(dx**2 + dy**2) * (hm_size**2) / (2 * sigma**2))


def alignment_loss(heatmap_logits: torch.Tensor, points: torch.Tensor, size: int, sigma: float = 1.5,
                   heatmap_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (total loss, L1 on coordinates normalised by the input size)."""
    logits = heatmap_logits.float()
    coords = soft_argmax(logits.sigmoid())
    l1 = (coords - points / size).abs().mean()
    target = gaussian_heatmaps(points, size, logits.shape[-1], sigma)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return l1 + heatmap_weight * bce, l1


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, task: str, temperature: float = 1.0) -> torch.Tensor:
    """Match the teacher's head output, resized to the student's resolution.

    Parsing: KL between softened class distributions (× T², Hinton et al.).
    Alignment: heatmap BCE against the teacher's probabilities + L1 between decoded coordinates.
    """
    student, teacher = student.float(), teacher.float()
    if teacher.shape[-2:] != student.shape[-2:]:
        teacher = F.interpolate(teacher, size=student.shape[-2:], mode="bilinear", align_corners=False)
    if task == "parsing":
        t = temperature
        return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True,
                        reduction="none").sum(dim=1).mean() * t * t
    target = teacher.sigmoid()
    coords = (soft_argmax(student.sigmoid()) - soft_argmax(target)).abs().mean()
    # Binary KL = BCE minus the target's own entropy, so a perfect match scores 0.
    entropy = F.binary_cross_entropy_with_logits(teacher, target)
    return F.binary_cross_entropy_with_logits(student, target) - entropy + coords
