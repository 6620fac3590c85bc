"""CLIP ViT image tower: CLIP names, QuickGELU, tapped feature maps, position-table resizing."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from farl_edge.models.task_model import build_backbone
from farl_edge.models.vit import QuickGELU, resize_pos_embed
from farl_edge.registry import get_config

from helpers_checkpoint import small_key_shapes


def _small(seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone(get_config("farl-small-224")).eval()


def test_clip_parameter_names():
    expected = {k[len("visual."):]: s for k, s in small_key_shapes().items()
                if k.startswith("visual.") and not k.startswith(("visual.mask_token", "visual.lm_", "visual.ln_lm"))}
    assert {k: tuple(v.shape) for k, v in _small().state_dict().items()} == expected


def test_quick_gelu_is_used():
    block = _small().transformer.resblocks[0]
    assert isinstance(block.mlp.gelu, QuickGELU)
    x = torch.linspace(-4, 4, 9)
    assert torch.allclose(QuickGELU()(x), x * torch.sigmoid(1.702 * x))


def test_small_feature_maps_at_224_and_448():
    model = _small()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(2, 3, 224, 224), blocks=[1, 2, 3, 5])
        assert [tuple(m.shape) for m in maps] == [(2, 192, 14, 14)] * 4
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 256)
        model.set_image_size(448)
        assert model.positional_embedding.shape == (785, 192) and model.image_size == 448
        maps = model.forward_intermediates(torch.randn(1, 3, 448, 448), blocks=[5, 1])
        assert [tuple(m.shape) for m in maps] == [(1, 192, 28, 28)] * 2


def test_intermediates_match_full_forward():
    model = _small()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        last = model.forward_intermediates(x, blocks=[5])[0]
        tokens = model.encode_tokens(x)
    assert torch.allclose(last, tokens[:, 1:].transpose(1, 2).reshape(1, 192, 14, 14), atol=1e-5)


def test_wrong_input_size_is_explained():
    with pytest.raises(ValueError, match="224px"):
        _small().forward_intermediates(torch.randn(1, 3, 448, 448), blocks=[1])


def test_farl_b16_feature_maps_at_224_and_448():
    torch.manual_seed(0)
    model = build_backbone(get_config("farl-b16-224")).eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 224, 224), blocks=[3, 5, 7, 11])
        assert [tuple(m.shape) for m in maps] == [(1, 768, 14, 14)] * 4
        model.set_image_size(448)
        maps = model.forward_intermediates(torch.randn(1, 3, 448, 448), blocks=[3, 5, 7, 11])
        assert [tuple(m.shape) for m in maps] == [(1, 768, 28, 28)] * 4
    assert all(torch.isfinite(m).all() for m in maps)


def _cv2_bicubic(grid: np.ndarray, size: int) -> np.ndarray:
    """Independent reference: OpenCV's bicubic (same a=-0.75 kernel), 4 channels at a time."""
    chunks = [cv2.resize(grid[..., i:i + 4], (size, size), interpolation=cv2.INTER_CUBIC)
              for i in range(0, grid.shape[-1], 4)]
    return np.concatenate([c.reshape(size, size, -1) for c in chunks], axis=-1)


def test_resize_pos_embed_matches_bicubic_reference():
    torch.manual_seed(0)
    table = torch.randn(197, 192)
    out = resize_pos_embed(table, 28)
    assert out.shape == (785, 192)
    assert torch.equal(out[0], table[0])  # class row kept
    ref = _cv2_bicubic(table[1:].reshape(14, 14, 192).numpy(), 28).reshape(784, 192)
    np.testing.assert_allclose(out[1:].numpy(), ref, atol=1e-5)
    grid = table[1:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    ref_torch = torch.nn.functional.interpolate(grid, size=(28, 28), mode="bicubic", align_corners=False)
    assert torch.allclose(out[1:], ref_torch[0].permute(1, 2, 0).reshape(784, 192), atol=1e-6)


def test_resize_pos_embed_identity_and_errors():
    table = torch.randn(197, 8)
    assert resize_pos_embed(table, 14) is table
    assert resize_pos_embed(resize_pos_embed(table, 28), 28).shape == (785, 8)
    with pytest.raises(ValueError, match="not a square grid"):
        resize_pos_embed(torch.randn(200, 8), 14)
