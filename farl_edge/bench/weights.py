"""The model side of a bench run: which weights each model runs (shipped, a checkpoint, or a seeded
random init saved once), its GMACs and parameters, its data folders, its op shapes per stage (for
the measured floor) and its backbone as a model of its own (for the backbone stage)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from farl_edge.bench.matrix import BenchConfig


@dataclass
class ModelInfo:
    name: str
    cfg: object
    checkpoint: str | None
    pretrained: bool
    weights: str  # description for the report
    gmacs: dict
    params_m: float
    param_bytes: int
    eval_dir: str | None
    calib_dir: str | None
    op_shapes: dict = field(default_factory=dict)  # stage → {OpShape: calls}, see farl_edge.bench.floor


def resolve_weights(cfg: BenchConfig, name: str, log) -> ModelInfo:
    import torch

    from farl_edge.models import create_model
    from farl_edge.models.complexity import count_macs
    from farl_edge.registry import get_config, weights_path

    mcfg = get_config(name)
    if cfg.checkpoint:
        ckpt, weights = cfg.checkpoint, f"checkpoint {Path(cfg.checkpoint).name}"
    elif weights_path(mcfg) is not None and not cfg.random_init:
        ckpt, weights = None, f"shipped ({mcfg.weights})"
    else:
        ckpt_path = cfg.cache / "weights" / f"{name}-random-seed{cfg.seed}.safetensors"
        if ckpt_path.is_file() and _card_drift(ckpt_path, mcfg):
            log(f"{name}: model config changed since {ckpt_path.name} was drawn; drawing it again")
            ckpt_path.unlink()
        if not ckpt_path.is_file():
            from farl_edge.checkpoint import save_checkpoint

            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(cfg.seed)
            save_checkpoint(create_model(name, pretrained=False), ckpt_path, sidecar=False)
        ckpt = str(ckpt_path)
        weights = f"random init (seed {cfg.seed}): timing is real, task metrics are not"
        log(f"{name}: no trained weights used — random init (seed {cfg.seed})")
    model = create_model(name, checkpoint=ckpt, pretrained=ckpt is None)
    gmacs = count_macs(model, mcfg.crop_size)
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    task = mcfg.task
    eval_dir = data_dir(task, "eval", cfg.data_root)
    calib_dir = data_dir(task, "calib", cfg.data_root)
    info = ModelInfo(name, mcfg, ckpt, ckpt is None, weights, gmacs, params / 1e6, nbytes,
                     str(eval_dir) if eval_dir else None, str(calib_dir) if calib_dir else None)
    if cfg.measured_floor:
        info.op_shapes = stage_op_shapes(model, info)
    return info


def stage_op_shapes(model, info: ModelInfo) -> dict:
    """{stage: {OpShape: calls}}: the full model, the backbone alone, and the head (the difference)."""
    from farl_edge.bench.floor import collect_op_shapes

    full = collect_op_shapes(model, info.cfg.crop_size)
    out = {"full": full}
    if info.cfg.task != "backbone":
        bb = collect_op_shapes(backbone_module(info), info.cfg.input_size)
        out["backbone"] = bb
        head = {s: n - bb.get(s, 0) for s, n in full.items() if n - bb.get(s, 0) > 0}
        out["head"] = head
    return out


def data_dir(task: str, which: str, root: Path | None = None) -> Path | None:
    """The evaluation / calibration faces of a task: ``root`` laid out like ../shared/data (e.g.
    ``300w/test-helen``), or the shared data itself when ``root`` is None; None when absent."""
    from farl_edge.export.calibration import DEFAULT_CALIB, DEFAULT_EVAL, shared_data_dir

    if root is None:
        return shared_data_dir(task, which)
    table = DEFAULT_CALIB if which == "calib" else DEFAULT_EVAL
    if task not in table:
        return None
    path = Path(root).joinpath(*table[task])
    return path if path.is_dir() else None


def changed_keys(recorded: dict, current: dict, keys) -> list[str]:
    return [k for k in keys if json.dumps(recorded.get(k), sort_keys=True) != json.dumps(current.get(k), sort_keys=True)]


def _card_drift(path: Path, mcfg) -> bool:
    from farl_edge.checkpoint import read_card

    return bool(changed_keys(read_card(path), mcfg.to_dict(), ("vision", "taps", "input_size", "head")))


def backbone_module(info: ModelInfo):
    """The model's ViT as a backbone-task FaRLModel (same weights), for exporting the backbone stage."""
    from farl_edge.models import create_model
    from farl_edge.models.task_model import FaRLModel

    full = create_model(info.name, checkpoint=info.checkpoint, pretrained=info.pretrained)
    bcfg = full.cfg.with_protocol(  # direct: the ViT at its own size
        "direct", name=f"{full.cfg.name}-backbone", task="backbone", head=None, labels=None, num_landmarks=None,
        weights=None, base=full.cfg.name, description=f"backbone stage of {full.cfg.name} (benchmark)")
    bb = FaRLModel(bcfg)
    bb.backbone.load_state_dict(full.backbone.state_dict())
    return bb.eval()


def source_weights_sha(info: ModelInfo) -> str | None:
    from farl_edge.export import manifest as mf
    from farl_edge.registry import get_config, weights_path

    file = info.checkpoint or (weights_path(get_config(info.name)) if info.pretrained else None)
    return mf.sha256_file(file) if file and Path(file).is_file() else None
