"""PyTorch models (imports torch). The runtime never imports this package."""
from farl_edge.models.factory import create_clip_model, create_model

__all__ = ["create_model", "create_clip_model"]
