"""Typed model configs: nested sections with one default each, unknown keys rejected, variants that
hold only what they change from their base, and the same dicts out (cards, manifests, runtimes)."""
from __future__ import annotations

import copy
import json
import pickle
import dataclasses

import pytest

from farl_edge.checkpoint import check_card_matches, read_card
from farl_edge.registry import (HeadCfg, ModelConfig, PreprocessCfg, TextCfg, VisionCfg, _config_dir,
                                _resolved_entries, get_config, list_models, resolve_base, weights_path)

EDGE = [n for n in list_models() if get_config(n).base]


def _raw(name: str) -> dict:
    return json.loads((_config_dir() / f"{name}.json").read_text())


def test_sections_are_typed_with_defaults_held_once():
    cfg = get_config("farl-small-celebm")
    assert isinstance(cfg.vision, VisionCfg) and isinstance(cfg.head, HeadCfg)
    assert isinstance(cfg.preprocess, PreprocessCfg) and cfg.text is None
    assert isinstance(get_config("farl-small-224").text, TextCfg)
    assert (cfg.vision.width, cfg.vision.heads, cfg.vision.output_dim) == (192, 3, 256)
    assert cfg.head.channels == 96 and cfg.head.out_stride == 4  # out_stride: the default, not in the file
    assert cfg.preprocess.warp == "similarity" and "warp_factor" not in _raw("farl-small-celebm")["preprocess"]
    assert get_config("farl-b16-lapa-448").preprocess.warp_factor == 0.8
    assert get_config("farl-small-300w").preprocess.box_scale == 1.25


@pytest.mark.parametrize("section,value,match", [
    ("preprocess", {"warp": "tanh", "warp_factr": 0.5}, "unknown keys.*warp_factr"),
    ("preprocess", {"warp": "thin-plate"}, "warp must be one of"),
    ("preprocess", {"warp": "box", "box_scale": "1.25"}, "box_scale must be a number"),
    ("head", {"type": "uper", "channels": 96, "poolscales": [1, 2]}, "unknown keys.*poolscales"),
    ("head", {"type": "uper"}, "needs 'channels'"),
    ("head", {"type": "uper", "channels": 96, "out_stride": 8}, "1/4"),
    ("head", {"type": "mlp", "channels": 96}, "unknown head type"),
    ("vision", {"width": 192, "layers": 6, "heads": 3, "patch": 16}, "unknown keys.*patch"),
    ("vision", {"width": 192, "layers": 6, "heads": 3}, "missing patch_size"),
    ("vision", {"width": 192, "layers": 6.0, "heads": 3, "patch_size": 16}, "layers must be an integer"),
])
def test_nested_typos_and_bad_values_are_errors(section, value, match):
    data = {**get_config("farl-small-300w").to_dict(), section: value}
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_dict(data)


def test_sections_read_like_the_dicts_they_were():
    cfg = get_config("farl-b16-lapa-448")
    assert cfg.vision["heads"] == 12 and cfg.vision.get("output_dim") == 512
    assert cfg.head.get("out_stride", 8) == 4  # the typed default wins over a caller's guess
    assert cfg.head.get("nonsense", "x") == "x"
    spelled = {"warp": "tanh", "warp_factor": 0.8, "protocol": "farl", "crop_size": 512}
    assert dict(cfg.preprocess) == spelled
    assert json.loads(json.dumps(cfg.preprocess)) == spelled  # manifests
    assert cfg.head == {"type": "uper", "channels": 768, "pool_scales": [1, 2, 3, 6], "dropout": 0.1}
    assert cfg.preprocess == {"warp": "tanh", "protocol": "farl"}  # equal in effect: the same warp factor, crop
    assert cfg.preprocess != {"warp": "tanh", "warp_factor": 0.5}
    with pytest.raises(TypeError, match="read-only"):
        cfg.preprocess["warp"] = "box"
    with pytest.raises(TypeError, match="read-only"):
        cfg.head.update(channels=1)
    assert pickle.loads(pickle.dumps(cfg)) == cfg and copy.deepcopy(cfg) == cfg
    assert dataclasses.asdict(cfg)["head"] == cfg.head


def test_replace_with_plain_dicts_gives_typed_sections():
    cfg = dataclasses.replace(get_config("farl-small-300w"), preprocess={"warp": "tanh"})
    assert isinstance(cfg.preprocess, PreprocessCfg) and cfg.preprocess.warp_factor == 0.8
    with pytest.raises(ValueError, match="unknown keys"):
        dataclasses.replace(cfg, preprocess={"wrap": "tanh"})


@pytest.mark.parametrize("name", list_models())
def test_to_dict_is_plain_json_and_round_trips(name):
    cfg = get_config(name)
    d = cfg.to_dict()
    assert all(type(d[k]) is dict for k in ("vision", "head", "preprocess", "text") if k in d)
    assert json.loads(json.dumps(d)) == d
    assert ModelConfig.from_dict(d) == cfg
    assert ModelConfig.from_dict(json.loads(json.dumps(d))).to_dict() == d


@pytest.mark.parametrize("name", EDGE)
def test_edge_configs_hold_only_what_they_change(name):
    raw, cfg = _raw(name), get_config(name)
    base = get_config(cfg.base)
    assert set(raw) <= {"name", "base", "description", "head", "weights", "preprocess"}
    # B/16 edge variants take the direct path (FaRL's 512 → 448 protocol stays with the full models)
    assert raw.get("preprocess", {"protocol": "direct"}) == {"protocol": "direct"} and cfg.crop_size == cfg.input_size
    assert raw["head"] == {"channels": cfg.head.channels} and cfg.head.channels < base.head.channels
    expected = {**base.to_dict(), "name": name, "description": raw["description"], "base": base.name,
                "head": {**base.to_dict()["head"], "channels": raw["head"]["channels"]}}
    if "preprocess" in raw:
        expected["preprocess"] = {**base.to_dict()["preprocess"], **raw["preprocess"]}
    expected.pop("weights", None)
    if raw.get("weights"):
        expected["weights"] = raw["weights"]
    got = cfg.to_dict()
    assert got == expected and list(got["head"]) == list(expected["head"])


def test_variant_never_takes_the_base_weights():
    base = {"name": "a", "task": "alignment", "weights": "a.safetensors", "description": "A",
            "head": {"type": "uper", "channels": 96}}
    out = resolve_base({"name": "b", "base": "a", "head": {"channels": 8}}, base)
    assert "weights" not in out and "description" not in out and out["head"] == {"type": "uper", "channels": 8}


def test_changing_a_sections_kind_does_not_merge_it():
    base = {"head": {"type": "uper", "channels": 96, "pool_scales": [1, 2]},
            "preprocess": {"warp": "box", "box_scale": 1.25}}
    out = resolve_base({"head": {"type": "edge"}, "preprocess": {"warp": "tanh"}}, base)
    assert out["head"] == {"type": "edge"} and out["preprocess"] == {"warp": "tanh"}
    same = resolve_base({"head": {"type": "uper", "dropout": 0.0}}, base)
    assert same["head"] == {"type": "uper", "channels": 96, "pool_scales": [1, 2], "dropout": 0.0}


def test_base_loops_and_unknown_bases_are_errors():
    with pytest.raises(ValueError, match="loop"):
        _resolved_entries({"a": {"name": "a", "base": "b"}, "b": {"name": "b", "base": "a"}})
    with pytest.raises(ValueError, match="not a registry model"):
        _resolved_entries({"a": {"name": "a", "base": "zz"}})


@pytest.mark.parametrize("name", [n for n in list_models() if weights_path(get_config(n))])
def test_shipped_cards_match_the_typed_configs(name):
    """The cards in the shipped weights were written from the untyped configs (celebm's still carry
    the warp_factor its similarity warp never reads): they load, match and read the same."""
    cfg = get_config(name)
    card = read_card(weights_path(cfg))
    check_card_matches(card, cfg)
    from farl_edge.checkpoint import config_from_card

    again = config_from_card(card)
    assert again.vision == cfg.vision and again.head == cfg.head and again.preprocess == cfg.preprocess
    for key, value in cfg.to_dict().items():
        if key not in ("name", "description", "weights", "preprocess"):
            assert card[key] == value, key
    assert {k: v for k, v in card["preprocess"].items() if k != "warp_factor" or cfg.preprocess.warp == "tanh"} \
        == cfg.to_dict()["preprocess"]


def test_old_manifest_model_blocks_load():
    """Artifacts exported before typing hold the old celebm block (with the unread warp_factor)."""
    old = {**get_config("farl-small-celebm").to_dict(), "preprocess": {"warp": "similarity", "warp_factor": 0.8}}
    cfg = ModelConfig.from_dict(old)
    assert cfg.to_dict()["preprocess"] == {"warp": "similarity", "warp_factor": 0.8}  # kept as written
    assert cfg == get_config("farl-small-celebm")
