"""Checkpoint loading/saving: official FaRL layout, trainer files, TorchScript, our safetensors."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from farl_edge.checkpoint import (
    CARD_METADATA_KEY,
    CheckpointError,
    load_official_image_tower,
    load_weights_into,
    map_farl_keys,
    read_card,
    save_checkpoint,
    sidecar_path,
)
from farl_edge.models.clip import FaRLClip
from farl_edge.models.factory import create_model
from farl_edge.models.task_model import FaRLModel
from farl_edge.registry import get_config

from helpers_checkpoint import (
    official_checkpoint,
    official_key_shapes,
    random_state,
    randomized,
    save_official,
    to_farl_names,
)

MIM_PREFIXES = ("visual.mask_token", "visual.lm_transformer.", "visual.ln_lm.", "visual.lm_head.")


def _task_model(name: str = "farl-small-300w", seed: int = 0, **changes) -> FaRLModel:
    torch.manual_seed(seed)
    cfg = get_config(name)
    return FaRLModel(dataclasses.replace(cfg, **changes) if changes else cfg).eval()


def _assert_tower_equals_file(tower, state: dict) -> None:
    for key in ("conv1.weight", "class_embedding", "transformer.resblocks.3.attn.in_proj_weight",
                "transformer.resblocks.5.mlp.c_proj.bias", "ln_post.weight", "proj"):
        assert torch.equal(tower.state_dict()[key], state[f"visual.{key}"]), key


# --------------------------------------------------------------------------- official layout
def test_official_layout_loads_into_backbone_model(tmp_path):
    path = save_official(tmp_path / "FaRL-small.pth")
    model = create_model("farl-small-224", checkpoint=path)
    _assert_tower_equals_file(model.backbone, official_checkpoint()["state_dict"])


def test_official_layout_ignores_exactly_text_and_mim_keys(tmp_path):
    path = save_official(tmp_path / "FaRL-small.pth")
    result = load_weights_into(_task_model("farl-small-224"), path)
    state = official_checkpoint()["state_dict"]
    non_tower = {k for k in state if not k.startswith("visual.") or k.startswith(MIM_PREFIXES)}
    assert result.format == "official"
    assert set(result.ignored) == non_tower
    assert "logit_scale" in non_tower and "token_embedding.weight" in non_tower and "visual.mask_token" in non_tower


def test_official_layout_loads_backbone_of_task_model(tmp_path):
    path = save_official(tmp_path / "FaRL-small.pth")
    model = _task_model("farl-small-300w")
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    load_weights_into(model, path)
    _assert_tower_equals_file(model.backbone, official_checkpoint()["state_dict"])
    assert all(torch.equal(v, model.head.state_dict()[k]) for k, v in head_before.items())  # head keeps its init


def test_full_b16_official_layout_accepted():
    """The real FaRL-B/16 key list and shapes (built from the spec) fit our backbone and FaRLClip."""
    shapes = official_key_shapes()
    assert shapes["visual.positional_embedding"] == (197, 768) and len(shapes) > 300
    torch.manual_seed(0)
    clip = FaRLClip(get_config("farl-b16-224"), mim=True)
    assert {k: tuple(v.shape) for k, v in clip.state_dict().items()} == shapes
    del clip
    state = random_state(shapes)
    model = FaRLModel(get_config("farl-b16-224"))
    result = load_official_image_tower(model.backbone, state, "FaRL-Base-Patch16-LAIONFace20M-ep16.pth")
    assert result.resized_pos_embed is None
    c_fc = model.backbone.transformer.resblocks[11].mlp.c_fc.weight
    assert torch.equal(c_fc, state["visual.transformer.resblocks.11.mlp.c_fc.weight"])
    assert torch.equal(model.backbone.positional_embedding, state["visual.positional_embedding"])


def test_official_pos_embed_resized_197_to_785_for_448_model(tmp_path):
    path = save_official(tmp_path / "FaRL-small.pth")
    model = _task_model("farl-small-300w", input_size=448)
    assert model.backbone.positional_embedding.shape[0] == 785
    result = load_weights_into(model, path)
    assert result.resized_pos_embed == (197, 785)
    src = official_checkpoint()["state_dict"]["visual.positional_embedding"]
    table = model.backbone.positional_embedding.detach()
    assert torch.equal(table[0], src[0])  # class row kept as is
    grid = src[1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=(28, 28), mode="bicubic", align_corners=False)
    assert torch.allclose(table[1:], ref[0].permute(1, 2, 0).reshape(784, -1), atol=1e-6)
    out = model.head_logits(torch.rand(1, 3, 448, 448))
    assert out.shape == (1, 68, 112, 112)


# --------------------------------------------------------------------------- errors name file and problem
def _save_state(tmp_path, state: dict, name: str = "bad.pth"):
    path = tmp_path / name
    torch.save({"state_dict": state}, path)
    return path


def test_missing_key_is_named(tmp_path):
    state = official_checkpoint()["state_dict"]
    del state["visual.ln_post.bias"]
    path = _save_state(tmp_path, state)
    with pytest.raises(CheckpointError) as err:
        load_weights_into(_task_model("farl-small-224"), path)
    msg = str(err.value)
    assert str(path) in msg and "missing 1 key: ln_post.bias" in msg


def test_unknown_key_in_tower_is_named(tmp_path):
    state = official_checkpoint()["state_dict"]
    state["visual.extra_adapter.weight"] = torch.zeros(3)
    path = _save_state(tmp_path, state)
    with pytest.raises(CheckpointError, match="unexpected 1 key: extra_adapter.weight") as err:
        load_weights_into(_task_model("farl-small-224"), path)
    assert str(path) in str(err.value)


def test_unknown_top_level_key_is_named(tmp_path):
    state = official_checkpoint()["state_dict"]
    state["text_adapter.weight"] = torch.zeros(3)
    path = _save_state(tmp_path, state)
    with pytest.raises(CheckpointError, match="outside the image tower.*text_adapter.weight") as err:
        load_weights_into(_task_model("farl-small-224"), path)
    assert str(path) in str(err.value)


def test_wrong_shape_is_named(tmp_path):
    state = official_checkpoint()["state_dict"]
    state["visual.proj"] = torch.zeros(192, 100)
    path = _save_state(tmp_path, state)
    with pytest.raises(CheckpointError) as err:
        load_weights_into(_task_model("farl-small-224"), path)
    msg = str(err.value)
    assert str(path) in msg and "wrong shape" in msg and "proj (192, 100) vs (192, 256)" in msg


def test_many_missing_keys_are_counted(tmp_path):
    state = {k: v for k, v in official_checkpoint()["state_dict"].items() if "resblocks.5." not in k}
    path = _save_state(tmp_path, state)
    with pytest.raises(CheckpointError, match=r"missing 12 keys: .*\(\+7 more\)"):
        load_weights_into(_task_model("farl-small-224"), path)


def test_truncated_file(tmp_path):
    path = save_official(tmp_path / "cut.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_weights_into(_task_model("farl-small-224"), path)
    msg = str(err.value)
    assert str(path) in msg and "truncated or corrupt" in msg and "Traceback" not in msg


def test_truncated_legacy_pickle_file(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save(official_checkpoint(), path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_weights_into(_task_model("farl-small-224"), path)
    assert str(path) in str(err.value)


def test_non_checkpoint_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(CheckpointError) as err:
        load_weights_into(_task_model("farl-small-224"), path)
    assert str(path) in str(err.value) and "not a checkpoint" in str(err.value)


def test_image_file_is_not_a_checkpoint(tmp_path):
    import cv2

    path = tmp_path / "face.jpg"
    cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_weights_into(_task_model("farl-small-224"), path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights_into(_task_model("farl-small-224"), tmp_path / "nope.pth")
    empty = tmp_path / "empty.pth"
    empty.touch()
    with pytest.raises(CheckpointError, match="empty") as err:
        load_weights_into(_task_model("farl-small-224"), empty)
    assert str(empty) in str(err.value)


class _Payload:  # any class: unpickling it would run arbitrary constructors
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": _Payload()}}, path)
    with pytest.raises(CheckpointError, match="refused for safety") as err:
        load_weights_into(_task_model("farl-small-224"), path)
    assert str(path) in str(err.value)


def test_unrecognised_dict_layout(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"epoch": 3, "optimizer": {}}, path)
    with pytest.raises(CheckpointError, match="not a recognised checkpoint layout.*epoch"):
        load_weights_into(_task_model("farl-small-224"), path)


def test_checkpoint_error_is_value_error():
    assert issubclass(CheckpointError, ValueError)


# --------------------------------------------------------------------------- FaRL trainer files
def test_farl_trainer_alignment_file_maps_and_loads(tmp_path):
    source = _task_model("farl-small-300w", seed=1)
    state = randomized(source.state_dict())
    path = tmp_path / "ibug300w.main_ema.pth"
    torch.save({"networks": {"main_ema": to_farl_names(state, "heatmap_head"), "main": {}}, "step": 10}, path)
    model = _task_model("farl-small-300w", seed=2)
    result = load_weights_into(model, path)
    assert result.format == "farl-trainer"
    assert set(result.ignored) == {"backbone.image_mean", "backbone.image_std"}
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_farl_trainer_parsing_file_maps_and_loads(tmp_path):
    state = randomized(_task_model("farl-small-celebm").state_dict())
    path = tmp_path / "celebm.pth"
    torch.save({"networks": {"main_ema": to_farl_names(state, "head")}}, path)
    model = _task_model("farl-small-celebm", seed=3)
    load_weights_into(model, path)
    for key in ("backbone.conv1.weight", "head.adapter.fpn1.1.running_var", "head.decoder.psp.stages.2.0.weight",
                "head.decoder.fpn_bottleneck.1.bias", "head.conv_seg.weight"):
        assert torch.equal(model.state_dict()[key], state[key]), key


def test_farl_trainer_unmapped_key_is_named(tmp_path):
    farl = to_farl_names(_task_model().state_dict())
    farl["heatmap_head.head.aux_head.weight"] = torch.zeros(1)
    path = tmp_path / "odd.pth"
    torch.save({"networks": {"main_ema": farl}}, path)
    with pytest.raises(CheckpointError, match="no mapping.*aux_head") as err:
        load_weights_into(_task_model(), path)
    assert str(path) in str(err.value)


def test_farl_trainer_wrong_class_count(tmp_path):
    path = tmp_path / "lapa.pth"
    torch.save({"networks": {"main_ema": to_farl_names(_task_model("farl-small-300w").state_dict())}}, path)
    model = _task_model("farl-small-300w", num_landmarks=98)
    with pytest.raises(CheckpointError, match=r"conv_seg.weight \(68, 96, 1, 1\) vs \(98, 96, 1, 1\)"):
        load_weights_into(model, path)


def test_farl_trainer_without_main_ema(tmp_path):
    path = tmp_path / "t.pth"
    torch.save({"networks": {"teacher": {"x": torch.zeros(1)}}}, path)
    with pytest.raises(CheckpointError, match="main_ema"):
        load_weights_into(_task_model(), path)


def test_key_rules_cover_named_fpn_and_module_prefix():
    target = _task_model().state_dict().keys()
    names = {
        "module.image_encoder.visual.conv1.weight": "backbone.conv1.weight",
        "module.backbone.fpn1.0.weight": "head.adapter.fpn1.0.weight",
        "module.backbone.fpn1.1.running_mean": "head.adapter.fpn1.1.running_mean",
        "module.backbone.fpn2.bias": "head.adapter.fpn2.bias",
        "module.decode_head.lateral_convs.2.bn.weight": "head.decoder.lateral_convs.2.1.weight",
        "module.heatmap_head.head.fpn_convs.0.conv.weight": "head.decoder.fpn_convs.0.0.weight",
    }
    from farl_edge.checkpoint import _strip_prefix

    mapped, _ = map_farl_keys(_strip_prefix({k: torch.zeros(1) for k in names}), target)
    assert set(mapped) == set(names.values())


def test_plain_state_dict_with_our_names(tmp_path):
    source = _task_model(seed=5)
    path = tmp_path / "plain.pt"
    torch.save(source.state_dict(), path)
    model = _task_model(seed=6)
    assert load_weights_into(model, path).format == "state-dict"
    assert torch.equal(model.head.conv_seg.weight, source.head.conv_seg.weight)


# --------------------------------------------------------------------------- TorchScript
class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _scripted_from_state(state: dict) -> torch.jit.ScriptModule:
    """A scripted module whose state dict has exactly ``state``'s names (as facer's jit files do)."""
    root = _Holder()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        mod = root
        for part in parents:
            if not hasattr(mod, part):
                mod.add_module(part, _Holder())
            mod = getattr(mod, part)
        if value.is_floating_point() and leaf != "image_mean" and leaf != "image_std":
            mod.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
        else:
            mod.register_buffer(leaf, value.clone())
    return torch.jit.script(root)


@pytest.fixture(scope="module")
def torchscript_file(tmp_path_factory):
    state = randomized(_task_model("farl-small-300w").state_dict(), seed=7)
    path = tmp_path_factory.mktemp("jit") / "face_alignment.farl.ibug300w.main_ema_jit.pt"
    torch.jit.save(_scripted_from_state(to_farl_names(state)), str(path))
    return path, state


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_refused_without_trust(torchscript_file):
    path, _ = torchscript_file
    with pytest.raises(CheckpointError) as err:
        load_weights_into(_task_model(), path)
    msg = str(err.value)
    assert str(path) in msg and "TorchScript" in msg and "executes code" in msg and "--trust-torchscript" in msg


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_loads_with_trust(torchscript_file):
    path, state = torchscript_file
    model = create_model("farl-small-300w", checkpoint=path, trust_torchscript=True)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


# --------------------------------------------------------------------------- our safetensors format
@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_safetensors_round_trip(tmp_path, dtype):
    source = _task_model(seed=8)
    source.load_state_dict(randomized(source.state_dict()))
    path = tmp_path / "farl-small-300w.safetensors"
    written = save_checkpoint(source, path, card={"notes": "unit test"}, dtype=dtype)
    model = _task_model(seed=9)
    result = load_weights_into(model, path)
    assert result.format == "farl-edge" and result.card == written
    for key, value in source.state_dict().items():
        expect = value.half().to(value.dtype) if dtype is not None and value.is_floating_point() else value
        assert torch.equal(model.state_dict()[key], expect), key
    card = read_card(path)
    assert card["model"] == "farl-small-300w" and card["task"] == "alignment" and card["num_landmarks"] == 68
    assert card["input_size"] == 224 and card["mean"] == list(get_config("farl-small-300w").mean)
    assert card["format_version"] == 1 and card["notes"] == "unit test"
    assert card["dtype"] == ("float16" if dtype else "float32")
    assert json.loads(sidecar_path(path).read_text()) == card
    assert sorted(os.listdir(tmp_path)) == ["farl-small-300w.safetensors", "farl-small-300w.safetensors.json"]


def test_fp16_file_is_about_half_size(tmp_path):
    model = _task_model()
    save_checkpoint(model, tmp_path / "a.safetensors")
    save_checkpoint(model, tmp_path / "b.safetensors", dtype=torch.float16)
    ratio = (tmp_path / "b.safetensors").stat().st_size / (tmp_path / "a.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55


def test_card_read_from_metadata_and_sidecar(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_checkpoint(_task_model(), path, sidecar=False)
    assert not sidecar_path(path).exists() and read_card(path)["model"] == "farl-small-300w"
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(2)}, str(bare))
    with pytest.raises(CheckpointError, match=f"no farl-edge model card.*{CARD_METADATA_KEY}"):
        read_card(bare)
    sidecar_path(bare).write_text(json.dumps({"model": "farl-small-300w"}))
    assert read_card(bare) == {"model": "farl-small-300w"}


def test_wrong_architecture_card_rejected(tmp_path):
    path = tmp_path / "farl-small-300w.safetensors"
    save_checkpoint(_task_model("farl-small-300w"), path)
    with pytest.raises(CheckpointError) as err:
        load_weights_into(_task_model("farl-small-celebm"), path)
    msg = str(err.value)
    assert str(path) in msg and "different architecture" in msg and "task 'alignment' vs 'parsing'" in msg
    with pytest.raises(CheckpointError, match="num_outputs 68 vs 98"):
        load_weights_into(_task_model("farl-small-300w", num_landmarks=98), path)
    with pytest.raises(CheckpointError, match="vision.width 192 vs 768"):
        load_weights_into(FaRLModel(get_config("farl-b16-224")), path)


def test_safetensors_input_size_may_differ(tmp_path):
    path = tmp_path / "m.safetensors"
    source = _task_model()
    save_checkpoint(source, path)
    model = _task_model(input_size=448)
    assert load_weights_into(model, path).resized_pos_embed == (197, 785)


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "m.safetensors"
    save_checkpoint(_task_model(seed=1), path)
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_task_model(seed=2), path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors", "m.safetensors.json"]


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(_task_model(), path, sidecar=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_weights_into(_task_model(), path)
    assert str(path) in str(err.value)
    path.write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="safetensors file is truncated"):
        read_card(path)


def test_card_needs_task_outputs(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        save_checkpoint(nn.Linear(2, 2), tmp_path / "x.safetensors", card={"model": "x", "task": "parsing"})
    assert list(tmp_path.iterdir()) == []


def test_config_rebuilt_from_card(tmp_path):
    from farl_edge.checkpoint import config_from_card

    path = tmp_path / "m.safetensors"
    save_checkpoint(_task_model("farl-small-celebm"), path)
    cfg, ref = config_from_card(read_card(path)), get_config("farl-small-celebm")
    assert cfg.name == ref.name and cfg.vision == ref.vision and cfg.labels == ref.labels
    assert cfg.head == ref.head and cfg.preprocess == ref.preprocess and cfg.num_outputs == 19
