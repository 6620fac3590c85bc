"""FaRL image-text model: official layout, loading, image-text logits."""
from __future__ import annotations

import pytest
import torch

from farl_edge.checkpoint import (
    CheckpointError,
    card_from_config,
    load_clip_weights,
    load_weights_into,
    save_checkpoint,
)
from farl_edge.models.clip import FaRLClip
from farl_edge.registry import get_config
from farl_edge.tokenizer import tokenize

from helpers_checkpoint import official_checkpoint, save_official, small_key_shapes

MIM_PREFIXES = ("visual.mask_token", "visual.lm_transformer.", "visual.ln_lm.", "visual.lm_head.")
CAPTIONS = ["a photo of a smiling woman", "a man with a beard", "a child wearing glasses"]


def _clip(mim: bool = False, seed: int = 0, **kwargs) -> FaRLClip:
    torch.manual_seed(seed)
    return FaRLClip(get_config("farl-small-224"), mim=mim, **kwargs).eval()


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    return save_official(tmp_path_factory.mktemp("official") / "FaRL-small.pth")


def test_state_dict_is_official_layout():
    shapes = {k: tuple(v.shape) for k, v in _clip(mim=True).state_dict().items()}
    assert shapes == small_key_shapes()
    no_mim = set(_clip(mim=False).state_dict())
    assert no_mim == {k for k in shapes if not k.startswith(MIM_PREFIXES)}


def test_image_text_logits():
    model = _clip()
    images, tokens = torch.rand(3, 3, 224, 224), tokenize(CAPTIONS)
    with torch.no_grad():
        per_image, per_text = model(images, tokens)
        img, txt = model.encode_image(images), model.encode_text(tokens)
    assert per_image.shape == (3, 3) and torch.equal(per_text, per_image.t())
    assert torch.allclose(img.norm(dim=-1), torch.ones(3)) and torch.allclose(txt.norm(dim=-1), torch.ones(3))
    assert torch.allclose(per_image, model.logit_scale.exp() * img @ txt.t(), atol=1e-5)


def test_text_feature_ignores_padding_after_eot():
    model = _clip()
    tokens = tokenize(CAPTIONS[:1])
    noisy = tokens.clone()
    noisy[0, 10:] = 1000  # causal mask: tokens after EOT cannot reach the EOT feature (ids < EOT keep argmax)
    with torch.no_grad():
        assert torch.allclose(model.encode_text(tokens), model.encode_text(noisy), atol=1e-6)


def test_official_file_loads_strictly_with_mim(official_file):
    model = _clip(mim=True)
    result = load_clip_weights(model, official_file)
    assert result.format == "official" and result.ignored == []
    state, loaded = official_checkpoint()["state_dict"], model.state_dict()
    assert set(state) == set(loaded)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_official_file_without_mim_ignores_mim_keys(official_file):
    model = _clip(mim=False)
    result = load_weights_into(model, official_file)  # dispatches to load_clip_weights
    assert result.ignored and all(k.startswith(MIM_PREFIXES) for k in result.ignored)
    state = official_checkpoint()["state_dict"]
    assert torch.equal(model.token_embedding.weight, state["token_embedding.weight"])
    assert torch.equal(model.logit_scale, state["logit_scale"])
    assert torch.equal(model.visual.transformer.resblocks[2].attn.in_proj_bias,
                       state["visual.transformer.resblocks.2.attn.in_proj_bias"])


def test_mim_model_requires_mim_keys(tmp_path):
    state = {k: v for k, v in official_checkpoint()["state_dict"].items() if not k.startswith(MIM_PREFIXES)}
    path = tmp_path / "no-mim.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"missing \d+ keys: visual.mask_token") as err:
        load_clip_weights(_clip(mim=True), path)
    assert str(path) in str(err.value)


def test_text_key_missing_is_an_error(tmp_path):
    state = official_checkpoint()["state_dict"]
    del state["text_projection"]
    path = tmp_path / "no-proj.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="missing 1 key: text_projection"):
        load_clip_weights(_clip(), path)


def test_clip_loads_at_448(official_file):
    model = _clip(image_size=448)
    result = load_clip_weights(model, official_file)
    assert result.resized_pos_embed == (197, 785)
    with torch.no_grad():
        assert model.encode_image(torch.rand(1, 3, 448, 448)).shape == (1, 256)


def test_clip_safetensors_round_trip(tmp_path):
    source = _clip(seed=1)
    path = tmp_path / "clip.safetensors"
    save_checkpoint(source, path, card=card_from_config(get_config("farl-small-224")))
    model = _clip(seed=2)
    result = load_clip_weights(model, path)
    assert result.card["model"] == "farl-small-224"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())


def test_mim_branch_forward():
    model = _clip(mim=True)
    mask = torch.zeros(2, 196, dtype=torch.bool)
    mask[:, ::3] = True
    with torch.no_grad():
        out = model.visual.forward_mim(torch.rand(2, 3, 224, 224), mask)
    assert out.shape == (2, 196, 8192)
