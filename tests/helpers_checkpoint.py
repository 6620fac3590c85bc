"""Synthetic checkpoints in the layouts FaRL publishes (random values, real names and shapes)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from farl_edge.models.clip import FaRLClip
from farl_edge.registry import get_config


def official_key_shapes(width=768, layers=12, patch=16, image=224, embed=512, text_width=512, text_layers=12,
                        context=77, vocab=49408, mim_layers=1, mim_vocab=8192) -> dict[str, tuple]:
    """Key → shape of FaRL's pre-training ``state_dict``, written from the CLIP/FaRL spec (not from our model)."""
    grid = image // patch
    shapes: dict[str, tuple] = {
        "visual.class_embedding": (width,),
        "visual.positional_embedding": (grid * grid + 1, width),
        "visual.proj": (width, embed),
        "visual.mask_token": (width,),
        "visual.conv1.weight": (width, 3, patch, patch),
        "visual.ln_pre.weight": (width,), "visual.ln_pre.bias": (width,),
        "visual.ln_post.weight": (width,), "visual.ln_post.bias": (width,),
        "visual.ln_lm.weight": (width,), "visual.ln_lm.bias": (width,),
        "visual.lm_head.weight": (mim_vocab, width), "visual.lm_head.bias": (mim_vocab,),
        "positional_embedding": (context, text_width),
        "text_projection": (text_width, embed),
        "logit_scale": (),
        "token_embedding.weight": (vocab, text_width),
        "ln_final.weight": (text_width,), "ln_final.bias": (text_width,),
    }
    for prefix, w, n in (("visual.transformer", width, layers), ("transformer", text_width, text_layers),
                         ("visual.lm_transformer", width, mim_layers)):
        for i in range(n):
            shapes.update(_block_shapes(f"{prefix}.resblocks.{i}", w))
    return shapes


def _block_shapes(p: str, w: int) -> dict[str, tuple]:
    return {
        f"{p}.attn.in_proj_weight": (3 * w, w), f"{p}.attn.in_proj_bias": (3 * w,),
        f"{p}.attn.out_proj.weight": (w, w), f"{p}.attn.out_proj.bias": (w,),
        f"{p}.ln_1.weight": (w,), f"{p}.ln_1.bias": (w,), f"{p}.ln_2.weight": (w,), f"{p}.ln_2.bias": (w,),
        f"{p}.mlp.c_fc.weight": (4 * w, w), f"{p}.mlp.c_fc.bias": (4 * w,),
        f"{p}.mlp.c_proj.weight": (w, 4 * w), f"{p}.mlp.c_proj.bias": (w,),
    }


def small_key_shapes() -> dict[str, tuple]:
    """The official layout at farl-small-224's sizes."""
    cfg = get_config("farl-small-224")
    v, t = cfg.vision, cfg.text
    return official_key_shapes(width=v["width"], layers=v["layers"], patch=v["patch_size"], image=cfg.input_size,
                               embed=v["output_dim"], text_width=t["width"], text_layers=t["layers"])


def random_state(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def official_checkpoint(seed: int = 0) -> dict:
    """farl-small-224 official-layout file contents: ``{"state_dict": ...}`` with text and MIM keys."""
    return {"state_dict": random_state(small_key_shapes(), seed)}


def save_official(path: Path, seed: int = 0) -> Path:
    torch.save(official_checkpoint(seed), path)
    return path


def clip_official_state(name: str = "farl-small-224") -> dict:
    """FaRLClip(mim=True) state dict (already in the official layout) with random values."""
    torch.manual_seed(0)
    return {k: v.clone() for k, v in FaRLClip(get_config(name), mim=True).state_dict().items()}


# Our names → FaRL trainer names, written from FaRL's module tree (FaceAlignmentTransformer /
# FaceParsingTransformer: backbone=FaRLVisualFeatures(visual, fpns), head=MMSEG_UPerHead(head=UPerHead)).
def to_farl_names(state: dict, head_attr: str = "heatmap_head") -> dict:
    h = f"{head_attr}.head"
    rules = [
        (r"^backbone\.(.+)$", r"backbone.visual.\1"),
        (r"^head\.adapter\.fpn1\.(.+)$", r"backbone.fpns.0.\1"),
        (r"^head\.adapter\.fpn2\.(.+)$", r"backbone.fpns.1.\1"),
        (r"^head\.decoder\.psp\.stages\.(\d+)\.0\.(.+)$", rf"{h}.psp_modules.\1.1.conv.\2"),
        (r"^head\.decoder\.psp\.stages\.(\d+)\.1\.(.+)$", rf"{h}.psp_modules.\1.1.bn.\2"),
        (r"^head\.decoder\.(bottleneck|fpn_bottleneck)\.0\.(.+)$", rf"{h}.\1.conv.\2"),
        (r"^head\.decoder\.(bottleneck|fpn_bottleneck)\.1\.(.+)$", rf"{h}.\1.bn.\2"),
        (r"^head\.decoder\.(lateral_convs|fpn_convs)\.(\d+)\.0\.(.+)$", rf"{h}.\1.\2.conv.\3"),
        (r"^head\.decoder\.(lateral_convs|fpn_convs)\.(\d+)\.1\.(.+)$", rf"{h}.\1.\2.bn.\3"),
        (r"^head\.conv_seg\.(.+)$", rf"{h}.conv_seg.\1"),
    ]
    out = {}
    for key, value in state.items():
        new = next(re.sub(p, r, key) for p, r in rules if re.match(p, key))
        out[new] = value
    # FaRLVisualFeatures registers its normalisation constants as (persistent) buffers.
    out["backbone.image_mean"] = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    out["backbone.image_std"] = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    return out


def randomized(state: dict, seed: int = 1) -> dict:
    """Same keys and shapes, fresh random floats (so 'loaded' is distinguishable from 'initialised')."""
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()) for k, v in state.items()}
