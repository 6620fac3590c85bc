"""create_model(name): registry config → PyTorch module, with weights when asked."""
from __future__ import annotations

from pathlib import Path

from farl_edge.registry import ModelConfig, get_config, weights_path


def create_model(name_or_cfg: str | ModelConfig, checkpoint: str | Path | None = None, pretrained: bool = True,
                 trust_torchscript: bool = False):
    """Build a registry model.

    ``checkpoint``: an official FaRL ``.pth``, a FaRL trainer file, or our safetensors file.
    ``pretrained``: load the weights the package ships for this name, if any.
    """
    from farl_edge.models.task_model import FaRLModel

    cfg = get_config(name_or_cfg) if isinstance(name_or_cfg, str) else name_or_cfg
    model = FaRLModel(cfg)
    source = Path(checkpoint) if checkpoint else (weights_path(cfg) if pretrained else None)
    if source is not None:
        from farl_edge.checkpoint import load_weights_into

        load_weights_into(model, source, trust_torchscript=trust_torchscript)
    return model.eval()


def create_clip_model(name: str = "farl-b16-224", mim: bool = False, **kwargs):
    from farl_edge.models.clip import FaRLClip

    return FaRLClip(get_config(name), mim=mim, **kwargs)
