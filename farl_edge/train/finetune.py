"""Fine-tuning for parsing and alignment (FaRL's recipe), one process per rank under torchrun.

Config (JSON, see ``train/configs``): model, data paths, epochs, batch size, learning rates for
backbone and head, weight decay, EMA decay, augmentations, init checkpoint, output folder.
The EMA weights are the evaluated and saved model, as in FaRL.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler

from farl_edge.datasets import open_dataset
from farl_edge.evaluate import evaluate
from farl_edge.models import create_model
from farl_edge.models.predictor import TorchPredictor
from farl_edge.train import losses
from farl_edge.train.distributed import all_reduce_mean, barrier, cleanup, init_distributed
from farl_edge.train.schedule import warmup_cosine
from farl_edge.train.state import load_train_state, save_train_state

DEFAULTS = {
    "epochs": 10, "batch_size": 16, "lr_backbone": 1e-4, "lr_head": 1e-3, "weight_decay": 1e-5,
    "betas": [0.9, 0.999], "ema": 0.999, "warmup_steps": 100, "bf16": True, "workers": 0, "seed": 0,
    "augment": {}, "eval_limit": None, "eval_every": 1, "threads": None, "max_steps": None,
    "heatmap_sigma": 1.5, "heatmap_weight": 1.0, "init": None, "freeze_backbone": False,
    # Layer-wise lr decay (BEiT / MAE fine-tuning of MIM-pretrained ViTs): block i of n runs at
    # lr_backbone · decay^(n − i), the patch embedding at decay^(n + 1); 1.0 = one backbone lr.
    "layer_decay": 1.0,
    # Distillation: {"model": name, ...TEACHER_DEFAULTS}
    "teacher": None, "init_backbone_from_teacher": True,
    # Slim UPerHead students: start from the teacher's adapter + its most important decoder channels.
    "init_head_from_teacher": False,
    # facer's TorchScript .pt files run code from the file when loaded: only on explicit request.
    "trust_torchscript": False,
}


# Keys a recipe may have besides DEFAULTS: the required three, validation data, the recipe it
# continues ("after") and the recipe's own path (filled in; kept in the checkpoint's card).
RECIPE_KEYS = ("model", "train_data", "output", "val_data", "after", "recipe")
TEACHER_DEFAULTS = {"checkpoint": None, "kd_weight": 1.0, "temperature": 1.0}  # "model" is required


def _recipe_keys(path: str | Path, seen: tuple = ()) -> dict:
    """A recipe's keys; one that continues another run (``after``) holds only what changes."""
    if str(path) in seen:
        raise ValueError(f"{path}: recipes continue each other in a loop ({' → '.join(seen)})")
    keys = {k: v for k, v in json.loads(Path(path).read_text()).items() if not k.startswith("_")}  # "_comment"
    if keys.get("after"):
        return {**_recipe_keys(keys["after"], (*seen, str(path))), **keys}
    return keys


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    cfg = {**DEFAULTS, **_recipe_keys(path)}
    cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
    cfg.setdefault("recipe", str(path))
    check_keys(cfg, path)
    return cfg


def check_keys(cfg: dict, path: str | Path = "<recipe>") -> None:
    """ValueError for a misspelt or missing key (as ``pretrain.load_config``): unknown keys would
    otherwise be ignored and the default used."""
    from farl_edge.train.task_data import AUGMENT_KEYS

    unknown = set(cfg) - set(DEFAULTS) - set(RECIPE_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown fine-tuning config keys {sorted(unknown)}")
    for key in ("model", "train_data", "output"):
        if key not in cfg:
            raise ValueError(f"{path}: training config needs {key!r}")
    unknown = set(cfg["augment"] or {}) - set(AUGMENT_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown keys in config section 'augment': {sorted(unknown)}; "
                         f"known: {', '.join(AUGMENT_KEYS)}")
    if cfg["teacher"]:
        unknown = set(cfg["teacher"]) - {"model", *TEACHER_DEFAULTS}
        if unknown:
            raise ValueError(f"{path}: unknown keys in config section 'teacher': {sorted(unknown)}")
        if "model" not in cfg["teacher"]:
            raise ValueError(f"{path}: the 'teacher' section needs 'model'")


def backbone_layer_id(name: str, num_blocks: int) -> int:
    """0 for the embeddings (patch conv, class / positional embedding, ln_pre), i + 1 for
    ``transformer.resblocks.i``, num_blocks + 1 for what follows the last block (ln_post, proj)."""
    if name.startswith("transformer.resblocks."):
        return int(name.split(".")[2]) + 1
    if name in ("ln_post.weight", "ln_post.bias", "proj"):
        return num_blocks + 1
    return 0


def param_groups(model, cfg: dict) -> list[dict]:
    """Backbone and head at their own learning rates (FaRL: 1e-4 / 1e-3 or 1e-2); with
    ``layer_decay`` < 1 one backbone group per layer, the lower layers at lower rates."""
    head = [p for p in model.head.parameters() if p.requires_grad]
    groups = [{"params": head, "lr": cfg["lr_head"]}]
    named = [(n, p) for n, p in model.backbone.named_parameters() if p.requires_grad]
    decay = cfg.get("layer_decay", 1.0)
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], not {decay}")
    if decay == 1.0:
        if named:
            groups.append({"params": [p for _, p in named], "lr": cfg["lr_backbone"]})
        return groups
    num_blocks = len(model.backbone.transformer.resblocks)
    by_layer: dict[int, list] = {}
    for name, p in named:
        by_layer.setdefault(backbone_layer_id(name, num_blocks), []).append(p)
    for layer, params in sorted(by_layer.items()):
        groups.append({"params": params, "lr": cfg["lr_backbone"] * decay ** (num_blocks + 1 - layer)})
    return groups


def task_loss(model, x, target, cfg: dict, teacher=None, shared_features: bool = False):
    """Task loss (+ distillation when a teacher is given).

    ``shared_features``: the student's frozen backbone is the teacher's, so the backbone runs once
    and ``model`` maps features to head logits.
    """
    teacher_logits = None
    if shared_features:
        with torch.no_grad():
            feats = teacher.features(x)
            teacher_logits = teacher.head(feats)
        logits = model(feats)
    else:
        logits = model(x)
    task = model_cfg(model).task
    if task == "parsing":
        loss = losses.parsing_loss(logits, target)
        stats = {"task": loss.item()}
    else:
        loss, l1 = losses.alignment_loss(logits, target, x.shape[-1], cfg["heatmap_sigma"], cfg["heatmap_weight"])
        stats = {"task": loss.item(), "l1": l1.item()}
    if teacher is not None:
        if teacher_logits is None:
            with torch.no_grad():
                teacher_logits = teacher.head_logits(x)
        kd = losses.distillation_loss(logits, teacher_logits, task, _teacher(cfg)["temperature"])
        loss = loss + _teacher(cfg)["kd_weight"] * kd
        stats["kd"] = kd.item()
    stats["loss"] = loss.item()
    return loss, stats


def _teacher(cfg: dict) -> dict:
    return {**TEACHER_DEFAULTS, **cfg["teacher"]}


def build_teacher(cfg: dict, device: torch.device):
    """The full-head model an edge head learns from (frozen, eval mode)."""
    from farl_edge.registry import get_config, weights_path

    spec = _teacher(cfg)
    if not spec["checkpoint"] and weights_path(get_config(spec["model"])) is None:
        raise ValueError(f"teacher {spec['model']!r} has no shipped weights: distilling from random weights teaches "
                         "nothing. Pass the fine-tuned teacher with --teacher-checkpoint (or teacher.checkpoint "
                         "in the recipe), e.g. FaRL's official face_parsing .pth")
    teacher = create_model(spec["model"], checkpoint=spec["checkpoint"],
                           trust_torchscript=cfg["trust_torchscript"]).to(device).eval()
    teacher.requires_grad_(False)
    return teacher


def model_cfg(model):
    return (model.module if hasattr(model, "module") else model).cfg


class HeadLogits(torch.nn.Module):
    """Forward = raw head output (from images, or from backbone features), so DDP wraps the call the losses need."""

    def __init__(self, model, from_features: bool = False):
        super().__init__()
        self.model = model
        self.cfg = model.cfg
        self.from_features = from_features

    def forward(self, x):
        return self.model.head(x) if self.from_features else self.model.head_logits(x)


def run(cfg: dict) -> dict:
    info = init_distributed()
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(cfg["seed"])
    out = Path(cfg["output"])
    model = create_model(cfg["model"], checkpoint=cfg["init"], pretrained=False,
                         trust_torchscript=cfg["trust_torchscript"]).to(info.device)
    teacher = build_teacher(cfg, info.device) if cfg["teacher"] else None
    if teacher is not None and cfg["init_backbone_from_teacher"] and not cfg["init"]:
        model.backbone.load_state_dict(teacher.backbone.state_dict())
    if teacher is not None and cfg["init_head_from_teacher"] and not cfg["init"]:
        from farl_edge.train.prune import init_slim_head_from_teacher
        init_slim_head_from_teacher(model.head, teacher.head)
    if cfg["freeze_backbone"]:
        model.backbone.requires_grad_(False)
    shared = teacher is not None and cfg["freeze_backbone"] and cfg["init_backbone_from_teacher"] and not cfg["init"]
    mcfg = model.cfg
    train_set = _task_dataset(cfg["train_data"], mcfg, cfg["augment"], cfg["seed"])
    sampler = DistributedSampler(train_set, info.world_size, info.rank, shuffle=True, seed=cfg["seed"])
    loader = DataLoader(train_set, batch_size=cfg["batch_size"], sampler=sampler, num_workers=cfg["workers"],
                        drop_last=True, persistent_workers=cfg["workers"] > 0)
    steps_per_epoch = len(loader)
    total = cfg["max_steps"] or cfg["epochs"] * steps_per_epoch
    net = HeadLogits(model, from_features=shared)
    ddp = DistributedDataParallel(net) if info.world_size > 1 else net
    optimizer = torch.optim.AdamW(param_groups(model, cfg), betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"])
    scheduler = warmup_cosine(optimizer, cfg["warmup_steps"], total)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg["ema"]), use_buffers=True)
    step, history = 0, []
    resume = out / "last.pt"
    if resume.exists():
        step, extra = load_train_state(resume, model=model, optimizer=optimizer, scheduler=scheduler)
        ema.module.load_state_dict(extra["ema"])
        history = extra.get("history", [])
    log_path = out / "train_log.csv"
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    start_time = time.time()
    bar = tqdm(total=total, initial=step, desc=f"train {mcfg.name}", disable=not info.is_main)
    while step < total:
        epoch = step // steps_per_epoch
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        net.train()
        skip = step % steps_per_epoch  # mid-epoch resume: skip batches already seen
        for i, (x, target) in enumerate(loader):
            if i < skip:
                continue
            x, target = x.to(info.device), target.to(info.device)
            with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=cfg["bf16"]):
                loss, stats = task_loss(ddp, x, target, cfg, teacher, shared)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            ema.update_parameters(model)
            step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in stats.items()})
            if info.is_main:
                _append_csv(log_path, {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                                       "time_s": round(time.time() - start_time, 1), **stats})
            if step >= total:
                break
        end_of_epoch = step % steps_per_epoch == 0 or step >= total
        if end_of_epoch and info.is_main:
            ep = step // steps_per_epoch
            if cfg.get("val_data") and (ep % cfg["eval_every"] == 0 or step >= total):
                metrics = evaluate(TorchPredictor(ema.module), _samples(cfg["val_data"]), limit=cfg["eval_limit"],
                                   progress=False)
                history.append({"epoch": ep, "step": step, **{k: v for k, v in metrics.items() if not isinstance(v, dict)}})
                bar.write(f"epoch {ep}: {json.dumps(history[-1])}")
            save_train_state(resume, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                             extra={"ema": ema.module.state_dict(), "history": history})
        barrier()
    bar.close()
    result = {"steps": step, "history": history, "train_seconds": round(time.time() - start_time, 1)}
    if info.is_main:
        from farl_edge.checkpoint import save_checkpoint

        card = {"training": {k: cfg[k] for k in cfg if k not in ("output",)}, "history": history}
        save_checkpoint(ema.module, out / f"{mcfg.name}.safetensors", card=card)
        (out / "result.json").write_text(json.dumps(result, indent=2))
    cleanup()
    return result


def _samples(path: str):
    return open_dataset(path)


def _task_dataset(path: str, mcfg, aug: dict, seed: int):
    from farl_edge.train.task_data import FaceTaskDataset

    return FaceTaskDataset(_samples(path), mcfg, aug, seed)


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
