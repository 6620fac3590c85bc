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


def create_clip_model(name: str = "farl-b16-224", mim: bool = False, checkpoint: str | Path | None = None, **kwargs):
    """FaRL image-text model; with ``checkpoint`` its weights are loaded strictly.

    With ``mim=True`` and a checkpoint, the MIM branch is sized from the file (depth of
    ``visual.lm_transformer``, vocabulary of ``visual.lm_head``): FaRL never published them.
    """
    from farl_edge.models.clip import FaRLClip

    if checkpoint is not None and mim:
        from farl_edge.checkpoint import mim_branch_shape

        shape = mim_branch_shape(checkpoint)
        if shape is not None:
            kwargs.setdefault("mim_layers", shape[0])
            kwargs.setdefault("mim_vocab_size", shape[1])
    model = FaRLClip(get_config(name), mim=mim, **kwargs)
    if checkpoint is not None:
        from farl_edge.checkpoint import load_clip_weights

        load_clip_weights(model, checkpoint)
    return model
