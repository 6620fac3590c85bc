"""Masked image modelling for FaRL pre-training: masks, targets, losses.

FaRL's MIM (paper; its pre-training code was never released): patch embeddings at masked
positions are replaced by the learned ``visual.mask_token``, the masked copy runs through the same
ViT blocks, then ``lm_transformer`` → ``ln_lm`` → ``lm_head`` predict the target at masked positions.

Targets (``mim.target`` in the pre-training config):

- ``"tokens"`` — discrete visual tokens from a BEiT-style image tokenizer (what FaRL did; FaRL's
  tokenizer is not available offline, so the user supplies one: a Python callable
  ``"module:function"``, a TorchScript file or an ONNX file). Cross-entropy over ``lm_head``'s
  vocabulary at masked positions; ``lm_head`` has ``vocab_size`` outputs (FaRL: 8192).
- ``"pixels"`` — a stand-in that needs no extra model: MAE-style regression of the masked patches'
  pixels, each patch normalised by its own mean and variance. ``lm_head`` then has
  ``patch_size² · 3`` outputs. Not FaRL's objective.

Masks: ``"block"`` = BEiT's blockwise masking (rectangles of random area and aspect ratio until
the budget is used, then topped up with random patches so exactly ``round(ratio · N)`` patches are
masked), or ``"random"`` = uniform random patches. Default ratio 0.4 (BEiT masks 75 of 196
patches ≈ 0.38; FaRL's ratio was not published).
"""
from __future__ import annotations

import importlib
import math
import random
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from farl_edge.checkpoint import TRUST_FLAG
from farl_edge.errors import UserError

DEFAULT_MASK_RATIO = 0.4
TARGETS = ("pixels", "tokens", "none")


# --------------------------------------------------------------------------- masks
def num_masked(num_patches: int, ratio: float) -> int:
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"mask ratio must be in [0, 1), not {ratio}")
    return int(round(ratio * num_patches))


def random_mask(grid: int, ratio: float, rng: random.Random) -> torch.Tensor:
    """(grid*grid,) bool with exactly ``round(ratio·N)`` True entries at random positions."""
    n = grid * grid
    mask = torch.zeros(n, dtype=torch.bool)
    mask[rng.sample(range(n), num_masked(n, ratio))] = True
    return mask


def block_mask(grid: int, ratio: float, rng: random.Random, min_block: int = 16, min_aspect: float = 0.3,
               max_aspect: float | None = None, exact: bool = True) -> torch.Tensor:
    """BEiT's blockwise masking generator (``MaskingGenerator``) on a ``grid × grid`` patch grid.

    Rectangles with area in [min_block, remaining budget] and aspect ratio in
    [min_aspect, 1/min_aspect] (log-uniform) are added while they add new patches. ``exact`` tops the
    result up with random patches so exactly ``round(ratio · N)`` are masked (BEiT may stop short).
    """
    n = grid * grid
    target = num_masked(n, ratio)
    max_aspect = max_aspect or 1.0 / min_aspect
    log_aspect = (math.log(min_aspect), math.log(max_aspect))
    mask = torch.zeros(grid, grid, dtype=torch.bool)
    count = 0
    while count < target:
        budget = target - count
        delta = 0
        for _attempt in range(10):
            area = rng.uniform(min(min_block, budget), budget)
            aspect = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < w < grid and 0 < h < grid:
                top, left = rng.randint(0, grid - h), rng.randint(0, grid - w)
                region = mask[top:top + h, left:left + w]
                new = h * w - int(region.sum())
                if 0 < new <= budget:
                    region.fill_(True)
                    delta = new
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    mask = mask.flatten()
    if exact and count < target:
        free = torch.nonzero(~mask).flatten().tolist()
        mask[rng.sample(free, target - count)] = True
    return mask


def generate_masks(batch: int, grid: int, ratio: float = DEFAULT_MASK_RATIO, mode: str = "block",
                   seed: int | None = None, rng: random.Random | None = None, **block_kwargs) -> torch.Tensor:
    """(batch, grid*grid) bool masks. Give ``seed`` (or ``rng``) for reproducible masks."""
    rng = rng or random.Random(seed)
    if mode == "block":
        masks = [block_mask(grid, ratio, rng, **block_kwargs) for _ in range(batch)]
    elif mode == "random":
        masks = [random_mask(grid, ratio, rng) for _ in range(batch)]
    else:
        raise UserError(f"mask mode must be 'block' or 'random', not {mode!r}")
    return torch.stack(masks)


# --------------------------------------------------------------------------- pixel target
def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, 3, H, W) → (B, N, patch² · 3), patches in raster order, pixels (row, col, channel) as MAE."""
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise UserError(f"image {h}x{w} is not a multiple of the patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def pixel_targets(images: torch.Tensor, patch_size: int, normalize: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """MAE target: patch pixels, each patch normalised by its own mean / (unbiased) variance."""
    target = patchify(images.float(), patch_size)
    if normalize:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps).sqrt()
    return target


def pixel_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked patches; ``pred``, ``target``: (M, patch² · 3)."""
    return F.mse_loss(pred.float(), target.float())


# --------------------------------------------------------------------------- token target
def token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the visual vocabulary; ``logits`` (M, V), ``tokens`` (M,)."""
    return F.cross_entropy(logits.float(), tokens.long())


_MEAN = (0.48145466, 0.4578275, 0.40821073)
_STD = (0.26862954, 0.26130258, 0.27577711)
_LOGIT_LAPLACE_EPS = 0.1


def prepare_tokenizer_input(images: torch.Tensor, kind: str) -> torch.Tensor:
    """Map RGB in [0, 1] to the input a tokenizer expects.

    ``unit``: unchanged; ``clip``: CLIP mean/std; ``dall_e``: DALL-E's ``map_pixels``
    ((1 − 2ε)·x + ε, ε = 0.1; BEiT feeds its DALL-E tokenizer this way); ``minus_one_one``: 2x − 1.
    """
    if kind == "unit":
        return images
    if kind == "clip":
        mean = images.new_tensor(_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(_STD).view(1, 3, 1, 1)
        return (images - mean) / std
    if kind == "dall_e":
        return (1 - 2 * _LOGIT_LAPLACE_EPS) * images + _LOGIT_LAPLACE_EPS
    if kind == "minus_one_one":
        return images * 2 - 1
    raise UserError(f"tokenizer input must be unit, clip, dall_e or minus_one_one, not {kind!r}")


def load_tokenizer_fn(spec: str, fmt: str | None = None, *,
                      trust_torchscript: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """A user-supplied visual tokenizer, named explicitly in the config.

    ``spec``: ``"package.module:function"`` (a Python callable), or a file: ``.onnx`` (run with ONNX
    Runtime, first input = images) or a TorchScript file (``.pt``/``.pth``/``.jit``/``.ts``). Loading
    TorchScript executes code from the file: refused unless ``trust_torchscript`` (the same opt-in as
    TorchScript checkpoints, ``--trust-torchscript``).
    ``fmt``: ``callable``, ``onnx`` or ``torchscript`` to override the detection.
    """
    path = Path(spec)
    if fmt is None:
        if path.suffix.lower() == ".onnx":
            fmt = "onnx"
        elif path.is_file():
            fmt = "torchscript"
        elif ":" in spec:
            fmt = "callable"
        else:
            raise UserError(f"MIM tokenizer {spec!r}: not a file and not a 'module:function' name")
    if fmt == "callable":
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise UserError(f"MIM tokenizer {spec!r}: expected 'module:function'")
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"MIM tokenizer {spec!r} is not callable")
        return obj
    if not path.is_file():
        raise FileNotFoundError(f"MIM tokenizer file {path} does not exist")
    if fmt == "torchscript":
        if not trust_torchscript:
            raise UserError(f"MIM tokenizer {path} is a TorchScript file, and loading TorchScript executes code "
                            f"stored in the file; if you trust its source, opt in with {TRUST_FLAG} "
                            f"(trust_torchscript=True)")
        module = torch.jit.load(str(path), map_location="cpu").eval()
        return module
    if fmt == "onnx":
        import numpy as np
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name

        def run_onnx(images: torch.Tensor) -> torch.Tensor:
            out = session.run(None, {input_name: images.detach().float().cpu().numpy().astype(np.float32)})[0]
            return torch.from_numpy(np.ascontiguousarray(out))

        return run_onnx
    raise UserError(f"MIM tokenizer format must be callable, onnx or torchscript, not {fmt!r}")


class TokenTarget:
    """Discrete MIM targets (B, N) from a user-supplied visual tokenizer.

    The tokenizer receives (B, 3, S, S) images (``image_size`` S, default the model's size) mapped
    by ``input`` (see ``prepare_tokenizer_input``) and returns token ids (B, N) or (B, h, w), or
    logits (B, V, h, w) (arg-maxed here). N must equal the model's number of patches.
    """

    def __init__(self, spec: str, vocab_size: int, input: str = "unit", image_size: int | None = None,
                 fmt: str | None = None, device: torch.device | str = "cpu", *, trust_torchscript: bool = False):
        self.spec, self.vocab_size, self.input, self.image_size = spec, vocab_size, input, image_size
        self.fn = load_tokenizer_fn(spec, fmt, trust_torchscript=trust_torchscript)
        if isinstance(self.fn, torch.nn.Module):
            self.fn = self.fn.to(device)
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, num_patches: int) -> torch.Tensor:
        x = images.float()
        if self.image_size and x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        out = self.fn(prepare_tokenizer_input(x, self.input))
        out = torch.as_tensor(out).to(images.device)
        if out.is_floating_point():
            if out.ndim != 4:
                raise UserError(f"MIM tokenizer {self.spec!r} returned float output of shape {tuple(out.shape)};"
                                " expected ids (B, N) or logits (B, V, h, w)")
            out = out.argmax(dim=1)
        ids = out.reshape(out.shape[0], -1).long()
        if ids.shape != (images.shape[0], num_patches):
            raise UserError(f"MIM tokenizer {self.spec!r} gave {tuple(ids.shape[1:])} tokens per image;"
                            f" the model has {num_patches} patches")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise UserError(f"MIM tokenizer {self.spec!r} gave ids outside [0, {self.vocab_size})")
        return ids


# --------------------------------------------------------------------------- glue
def lm_head_size(mim_cfg: dict, patch_size: int) -> int:
    """Output size of ``visual.lm_head`` for the chosen target."""
    target = mim_cfg.get("target", "pixels")
    if target == "pixels":
        return patch_size * patch_size * 3
    if target == "tokens":
        return int(mim_cfg.get("vocab_size", 8192))
    raise UserError(f"MIM target {target!r} has no lm_head")


def mim_loss(pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, target: str, patch_size: int,
             tokens: torch.Tensor | None = None, norm_pix: bool = True) -> torch.Tensor:
    """Loss at masked positions. ``pred``: (M, out) predictions for the True entries of ``mask`` (B, N)."""
    if target == "pixels":
        return pixel_loss(pred, pixel_targets(images, patch_size, normalize=norm_pix)[mask])
    if target == "tokens":
        if tokens is None:
            raise UserError("token MIM target needs the tokenizer's ids")
        return token_loss(pred, tokens[mask])
    raise UserError(f"MIM target must be one of {TARGETS[:2]}, not {target!r}")
