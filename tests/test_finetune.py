"""Fine-tuning and distillation on real shared data: losses go down, the loop saves and resumes."""
import csv
import json

import pytest
import torch

from farl_edge.checkpoint import read_card
from farl_edge.datasets import open_dataset
from farl_edge.models import create_model
from farl_edge.registry import get_config
from farl_edge.train.finetune import DEFAULTS, HeadLogits, build_teacher, load_config, run, task_loss
from farl_edge.train.task_data import FaceTaskDataset


def _fixed_batch(data_dir, name, n=8):
    ds = FaceTaskDataset(open_dataset(data_dir)[:n], get_config(name), aug=None)
    xs, ys = zip(*(ds[i] for i in range(n)))
    return torch.stack(xs), torch.stack(ys)


def _loss_drop(name, data_dir, steps=12, teacher=None, freeze=False):
    torch.manual_seed(0)
    model = create_model(name, pretrained=False).train()
    cfg = dict(DEFAULTS)
    shared = False
    if teacher is not None:
        # KD dominates so the test isolates it from the task loss (the teacher may be untrained here).
        cfg["teacher"] = {"model": teacher.cfg.name, "kd_weight": 10.0, "temperature": 1.0}
        model.backbone.load_state_dict(teacher.backbone.state_dict())
        shared = freeze
    if freeze:
        model.backbone.requires_grad_(False)
    net = HeadLogits(model, from_features=shared)
    x, y = _fixed_batch(data_dir, name)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    history = []
    for _ in range(steps):
        loss, stats = task_loss(net, x, y, cfg, teacher, shared)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(stats)
    return history


def test_alignment_finetune_steps_reduce_loss(w300_train_dir):
    h = _loss_drop("farl-small-300w", w300_train_dir)
    assert h[-1]["loss"] < 0.8 * h[0]["loss"]


def test_parsing_finetune_steps_reduce_loss(celebm_train_dir):
    h = _loss_drop("farl-small-celebm", celebm_train_dir)
    assert h[-1]["loss"] < 0.8 * h[0]["loss"]


@pytest.mark.parametrize("student,data", [("farl-small-300w-edge", "w300_train_dir"),
                                          ("farl-small-celebm-edge", "celebm_train_dir")])
def test_distillation_reduces_distillation_loss(student, data, request):
    data_dir = request.getfixturevalue(data)
    teacher = create_model(get_config(student).base).eval()
    teacher.requires_grad_(False)
    h = _loss_drop(student, data_dir, teacher=teacher, freeze=True)
    assert h[-1]["kd"] < 0.8 * h[0]["kd"]


def test_continuation_recipe_holds_only_what_changes(tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"model": "farl-small-300w", "train_data": "d", "output": "runs/a", "epochs": 5,
                                "lr_head": 1e-3}))
    cont = tmp_path / "cont.json"
    cont.write_text(json.dumps({"after": str(base), "output": "runs/b", "lr_head": 3e-4}))
    cfg = load_config(cont)
    assert (cfg["model"], cfg["epochs"], cfg["output"], cfg["lr_head"]) == ("farl-small-300w", 5, "runs/b", 3e-4)
    assert cfg["recipe"] == str(cont)
    base.write_text(json.dumps({"after": str(cont)}))
    with pytest.raises(ValueError, match="loop"):
        load_config(cont)


def test_teacher_without_weights_is_refused():
    cfg = {**DEFAULTS, "teacher": {"model": "farl-b16-lapa-448", "checkpoint": None}}
    with pytest.raises(ValueError, match="--teacher-checkpoint"):
        build_teacher(cfg, torch.device("cpu"))


def test_finetune_loop_saves_card_log_and_resumes(w300_train_dir, helen_dir, tmp_path):
    cfg_path = tmp_path / "recipe.json"
    cfg_path.write_text(json.dumps({
        "model": "farl-small-300w", "train_data": str(w300_train_dir), "val_data": str(helen_dir),
        "output": str(tmp_path / "run"), "batch_size": 4, "max_steps": 2, "eval_limit": 4, "warmup_steps": 1,
    }))
    result = run(load_config(cfg_path))
    assert result["steps"] == 2 and result["history"][-1]["n"] == 4
    card = read_card(tmp_path / "run" / "farl-small-300w.safetensors")
    assert card["model"] == "farl-small-300w" and card["training"]["max_steps"] == 2
    rows = list(csv.DictReader((tmp_path / "run" / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2]
    # Same output folder, more steps: resumes at step 2 instead of starting over.
    result = run(load_config(cfg_path, {"max_steps": 3}))
    rows = list(csv.DictReader((tmp_path / "run" / "train_log.csv").open()))
    assert result["steps"] == 3 and [int(r["step"]) for r in rows] == [1, 2, 3]


@pytest.mark.parametrize("keys,match", [
    ({"lr_heads": 1e-3}, r"unknown fine-tuning config keys \['lr_heads'\]"),
    ({"augment": {"rotate": 10, "rotation": 5}}, r"'augment': \['rotation'\]"),
    ({"teacher": {"model": "farl-small-300w", "kd_wieght": 2.0}}, r"'teacher': \['kd_wieght'\]"),
    ({"teacher": {"checkpoint": "t.pt"}}, "needs 'model'"),
])
def test_unknown_recipe_keys_are_errors(tmp_path, keys, match):
    """As pretrain.load_config: a misspelt key is an error, not a silent fall-back to the default."""
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"model": "farl-small-300w", "train_data": "d", "output": "o", **keys}))
    with pytest.raises(ValueError, match=match):
        load_config(path)
    cont = tmp_path / "cont.json"  # also in a continuation recipe, and in overrides
    cont.write_text(json.dumps({"after": str(path)}))
    with pytest.raises(ValueError, match=match):
        load_config(cont)


def test_shipped_recipes_pass_the_key_check(monkeypatch):
    from pathlib import Path

    root = Path(__file__).parent.parent
    monkeypatch.chdir(root)  # continuation recipes name their base from the repository root
    recipes = [p for p in sorted(Path("train/configs").glob("*.json")) if not p.name.startswith("pretrain")]
    assert recipes
    for path in recipes:
        cfg = load_config(path)
        assert cfg["model"] and cfg["recipe"] == str(path)
    with pytest.raises(ValueError, match="unknown fine-tuning config keys"):
        load_config(recipes[0], {"epoch": 3})


def test_layer_decay_param_groups():
    """layer_decay < 1: one backbone group per layer, lr_backbone · decay^(n + 1 − layer) (the
    embeddings lowest, ln_post / proj at lr_backbone); every trainable parameter in exactly one group."""
    from farl_edge.train.finetune import param_groups

    model = create_model("farl-small-300w", pretrained=False)
    n = len(model.backbone.transformer.resblocks)
    cfg = {**DEFAULTS, "lr_backbone": 1e-3, "lr_head": 2e-3, "layer_decay": 0.5}
    groups = param_groups(model, cfg)
    assert groups[0]["lr"] == 2e-3 and len(groups) == 1 + n + 2
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(lr_of) == sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    bb = dict(model.backbone.named_parameters())
    assert lr_of[id(bb["conv1.weight"])] == pytest.approx(1e-3 * 0.5 ** (n + 1))
    assert lr_of[id(bb["transformer.resblocks.0.attn.in_proj_weight"])] == pytest.approx(1e-3 * 0.5 ** n)
    assert lr_of[id(bb[f"transformer.resblocks.{n - 1}.mlp.c_fc.weight"])] == pytest.approx(1e-3 * 0.5)
    assert lr_of[id(bb["ln_post.weight"])] == pytest.approx(1e-3)
    # off: one backbone group at lr_backbone; out of range: an error naming the key
    assert [g["lr"] for g in param_groups(model, {**cfg, "layer_decay": 1.0})] == [2e-3, 1e-3]
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(model, {**cfg, "layer_decay": 1.5})
