"""The benchmark matrix: models × targets × precisions × stages × batch sizes, one report.

``run_bench(BenchConfig(...))``:

1. detect the CPU (:mod:`farl_edge.bench.hardware`), resolve each model's weights (shipped, a
   checkpoint, or a seeded random init saved once as a checkpoint so that every row — PyTorch and
   every exported artifact — runs the same weights), count its GMACs (``count_macs``: total,
   backbone, head);
2. plan the rows. Which targets and precisions exist, and how each exports, comes from the
   formats table (:data:`farl_edge.export.formats.FORMATS`: ``Format.precisions``,
   ``Format.int8_modes``, ``Format.options``): a format registered there is a bench target with
   no change here. Precision per target:

   | target | fp32 | bf16 | fp16 | int8 |
   | --- | --- | --- | --- | --- |
   | torch (``device`` cpu) | eager fp32 | ``torch.autocast`` bf16 | – | – |
   | torch (``device`` cuda) | eager fp32, TF32 off | autocast bf16 | autocast fp16 | – |
   | onnx | ORT, fused graph | – | fp16 graph | dynamic (default) or static QDQ |
   | openvino | fp32 IR, INFERENCE_PRECISION_HINT=f32 | the same fp32 IR, hint bf16 | fp16-compressed IR | NNCF PTQ (rest in the device default: bf16 on AMX) |
   | any other format (tensorrt, tensorrt-rtx, coreml, ...) | each of ``Format.precisions``, exported as itself | | | |

   The OpenVINO fp32/bf16 rows are the only bench-side settings (:data:`RUNTIME_VARIANTS`,
   keyed by (target, precision)). ``precisions`` items may name a target (``tensorrt:fp16``).
   Targets that cannot run here (no NVIDIA GPU, not macOS, library missing) become rows with
   their reason; precisions a target has no path for are listed as "not measured". PyTorch fp32
   rows are always measured: they are the reference for "× torch", Δmetric and the cosine;
3. export what is missing through the export pipeline's Python API (cached under
   ``cache/artifacts``: one fixed-batch artifact per batch size, as deployed; a failed parity
   validation keeps the artifact, marked failed, and the row says so);
4. measure each row in a fresh subprocess (:mod:`farl_edge.bench.worker`);
5. derive × torch, the compute floor (rows that run on the host CPU only), Δmetric; write the
   report (:mod:`farl_edge.bench.report`).

``dry_run`` stops after the plan (no weights, no exports): rows, availability, the artifacts
that would be exported and the data folders found, written to ``plan.json`` / ``plan.md``.
``budget_s`` stops starting rows once that many seconds have passed: the rest are ``skipped``.

Stages: ``full`` (the whole model), ``backbone`` and ``head``. PyTorch times ``model.features``
and ``model.head`` (on precomputed features) separately. Exported backbones are the same ViT
exported as a backbone-task model (weights copied; its output is the CLS embedding, so it adds
``ln_post`` + ``proj`` on one token, < 0.01 % of the MACs); the exported head stage is derived as
full − backbone (marked "derived"). Stage rows run at the first batch size only.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from farl_edge.bench import hardware
from farl_edge.bench.timing import TimingPolicy

ALL_PRECISIONS = ("fp32", "bf16", "fp16", "int8")  # plus any other precision of the formats table
STAGES = ("full", "backbone", "head")
DEVICES = ("cpu", "cuda")  # where the PyTorch rows run (exported rows run where their runtime runs)
METRIC = {"parsing": ("f1_mean", "higher"), "alignment": ("nme_io", "lower")}
# device → PyTorch precisions (autocast dtype; fp32 = eager, and TF32 off on CUDA)
TORCH_PRECISIONS = {"cpu": {"fp32": None, "bf16": "bfloat16"},
                    "cuda": {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}}


@dataclass(frozen=True)
class ExportSetting:
    """How a bench row of an exported target gets its artifact and opens it."""

    precision: str  # the precision the export pipeline builds
    runtime_options: dict = field(default_factory=dict)  # bench-only runtime options of the row's session
    description: str = ""


# Bench-only runtime variants, keyed by (target, precision): rows that open an artifact of another
# export precision with extra runtime options. Every other row comes from the formats table.
RUNTIME_VARIANTS: dict[tuple[str, str], ExportSetting] = {
    ("openvino", "fp32"): ExportSetting("fp32", {"inference_precision": "f32"}, "OpenVINO fp32 IR, hint f32"),
    ("openvino", "bf16"): ExportSetting("fp32", {"inference_precision": "bf16"}, "OpenVINO fp32 IR, hint bf16"),
}
NO_PATH = {
    ("torch", "fp16"): "PyTorch CPU has no fast fp16 path (use bf16 autocast; fp16 autocast runs with --device cuda)",
    ("torch", "int8"): "PyTorch eager INT8 is not part of farl-edge (exported INT8: the export targets)",
    ("onnx", "bf16"): "ONNX Runtime's CPU provider has no bf16 kernels for this graph",
}


def known_targets() -> tuple[str, ...]:
    """torch and every export format of the formats table."""
    from farl_edge.export.formats import FORMATS

    return ("torch", *FORMATS)


def known_precisions() -> tuple[str, ...]:
    from farl_edge.export.formats import FORMATS

    return tuple(dict.fromkeys([*ALL_PRECISIONS, *(p for f in FORMATS.values() for p in f.precisions)]))


def export_setting(target: str, precision: str) -> ExportSetting | None:
    """The export precision + runtime options of an exported target's row, or None: no such path."""
    from farl_edge.export.formats import FORMATS

    fmt = FORMATS.get(target)
    if fmt is None:
        return None
    variant = RUNTIME_VARIANTS.get((target, precision))
    if variant is not None:
        return variant if variant.precision in fmt.precisions else None
    if precision in fmt.precisions:
        return ExportSetting(precision, {}, fmt.description)
    return None


def int8_mode_for(fmt, preferred: str) -> str:
    """The bench's preferred int8 mode where the format offers it, else the format's default."""
    return preferred if preferred in fmt.int8_modes else fmt.int8_modes[0]


def runs_on_host_cpu(target: str, device: str = "cpu") -> bool:
    """Whether a row's compute runs on this CPU (the floor applies only then)."""
    if target == "torch":
        return device == "cpu"
    from farl_edge.export.formats import FORMATS

    fmt = FORMATS.get(target)
    return fmt is not None and fmt.notes.get("run_needs", "CPU").startswith("CPU")


@functools.lru_cache(maxsize=None)
def backend_takes(backend: str, option: str) -> bool:
    """Whether runtime backend ``backend``'s runner takes ``option`` (e.g. ``threads``: the CPU
    runtimes), read from the signature of the runner class its ``open`` returns."""
    import importlib
    import inspect
    import typing

    from farl_edge.runtime.backends import BACKENDS

    try:
        module = importlib.import_module(BACKENDS[backend])
        runner = typing.get_type_hints(module.open).get("return")
        params = inspect.signature(runner if runner is not None else module.open).parameters
    except Exception:  # unknown backend, missing annotations: pass nothing extra
        return False
    return option in params


@dataclass
class BenchConfig:
    models: list[str]
    targets: list[str] = field(default_factory=lambda: ["torch", "onnx", "openvino"])
    # precisions for every target; "TARGET:PRECISION" items apply to that target only
    precisions: list[str] = field(default_factory=lambda: ["fp32", "bf16", "int8"])
    batches: list[int] = field(default_factory=lambda: [1, 8])
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    threads: int | None = None
    policy: TimingPolicy = field(default_factory=TimingPolicy)
    eval_limit: int = 32
    out: Path = Path("bench-results")
    cache: Path | None = None  # default out/cache
    checkpoint: str | None = None  # one model only
    random_init: bool = False
    seed: int = 0
    calib_size: int = 32
    export_eval_size: int = 4  # faces of the export's own parity validation (the bench measures accuracy itself)
    onnx_int8_mode: str = "dynamic"  # preferred int8 mode, used by every format that offers it (else its default)
    export_options: dict = field(default_factory=dict)  # target → builder options (Format.options)
    device: str = "cpu"  # PyTorch rows: cpu or cuda
    data_root: Path | None = None  # folder laid out like ../shared/data (evaluation + calibration faces)
    budget_s: float | None = None  # stop starting rows after this many seconds (the rest: skipped)
    dry_run: bool = False  # plan only: nothing is exported or measured
    cpu_mhz: float | None = None
    measured_floor: bool = True  # time the model's own op shapes alone (floor.py) after the rows
    worker_timeout: float = 3600.0
    export_only: bool = False  # fill the artifact cache, measure nothing (exports need no quiet machine)
    command: str = ""
    log: Callable[[str], None] = print

    def __post_init__(self):
        from farl_edge.export.formats import FORMATS

        targets, precisions = known_targets(), known_precisions()
        bad = [t for t in self.targets if t not in targets]
        if bad:
            raise ValueError(f"unknown targets {bad}; known: {', '.join(targets)}")
        bad = [p for p in self.precisions if p.rpartition(":")[2] not in precisions
               or (":" in p and p.rpartition(":")[0] not in targets)]
        if bad:
            raise ValueError(f"unknown precisions {bad}; known: {', '.join(precisions)} "
                             f"(optionally as TARGET:PRECISION, targets {', '.join(targets)})")
        bad = [s for s in self.stages if s not in STAGES]
        if bad or "full" not in self.stages:
            raise ValueError(f"stages must include 'full' and be among {STAGES}, not {self.stages}")
        if not self.batches or any(int(b) < 1 for b in self.batches):
            raise ValueError("batch sizes must be >= 1")
        self.batches = sorted({int(b) for b in self.batches})
        modes = sorted({m for f in FORMATS.values() for m in f.int8_modes})
        if self.onnx_int8_mode not in modes:
            raise ValueError(f"int8 mode must be one of {', '.join(modes)}, not {self.onnx_int8_mode!r}")
        for target, opts in self.export_options.items():
            if target not in FORMATS:
                raise ValueError(f"export options for unknown target {target!r}; known: {', '.join(FORMATS)}")
            unknown = sorted(set(opts) - set(FORMATS[target].options))
            if unknown:
                raise ValueError(f"target {target!r} takes no option {', '.join(unknown)}; its options: "
                                 f"{', '.join(FORMATS[target].options) or 'none'}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.budget_s is not None and self.budget_s <= 0:
            raise ValueError("the time budget must be > 0 seconds")
        if self.checkpoint and len(self.models) != 1:
            raise ValueError("--checkpoint applies to one model only")
        if self.eval_limit < 0 or self.calib_size < 1:
            raise ValueError("--eval-limit must be >= 0 and the calibration size >= 1")
        self.out = Path(self.out)
        self.cache = Path(self.cache) if self.cache else self.out / "cache"
        self.data_root = Path(self.data_root) if self.data_root else None
        self.threads = int(self.threads or os.cpu_count() or 1)

    def precisions_for(self, target: str) -> list[str]:
        """This run's precisions for ``target`` (plain items, plus the ``target:precision`` ones)."""
        out = []
        for item in self.precisions:
            t, sep, precision = item.rpartition(":")
            if not sep or t == target:
                out.append(precision)
        return list(dict.fromkeys(out))


@dataclass
class Row:
    model: str
    target: str
    precision: str
    stage: str
    batch: int
    status: str = "planned"  # ok | unavailable | failed | derived | unreliable
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # measured + derived values (report columns)

    @property
    def key(self) -> tuple:
        return self.model, self.target, self.precision, self.stage, self.batch

    def to_dict(self) -> dict:
        return {"model": self.model, "target": self.target, "precision": self.precision, "stage": self.stage,
                "batch": self.batch, "status": self.status, "reason": self.reason, "notes": self.notes, **self.data}


# ----------------------------------------------------------------------------- availability
def torch_availability(device: str = "cpu") -> tuple[bool, str]:
    if device == "cpu":
        return True, ""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, (f"torch {torch.__version__} sees no CUDA GPU (--device cuda needs an NVIDIA GPU and a CUDA "
                       f"build of torch)")
    return True, ""


def target_availability(target: str, device: str = "cpu") -> tuple[bool, str]:
    """(can run here, reason) for a target (the export format's builder and its runtime backend)."""
    import importlib

    if target == "torch":
        return torch_availability(device)
    from farl_edge.export.formats import FORMATS
    from farl_edge.runtime.backends import available_backends

    fmt = FORMATS.get(target)
    if fmt is None:
        return False, f"no export format {target!r} in this build"
    run_ok, run_why = available_backends().get(fmt.backend, (False, f"no runtime backend {fmt.backend!r}"))
    missing = fmt.missing()
    build_ok, build_why = (not missing), (f"needs {', '.join(missing)} (pip install 'farl-edge[{fmt.extra}]')"
                                          if missing else "")
    if build_ok and fmt.notes.get("build_check"):
        module, _, func = fmt.notes["build_check"].partition(":")
        try:
            build_ok, build_why = getattr(importlib.import_module(module), func)()
        except Exception as e:  # a broken optional install is a reason, not a crash
            build_ok, build_why = False, f"{type(e).__name__}: {e}"
    if run_ok and build_ok:
        return True, ""
    parts = []
    if not run_ok:
        parts.append(f"cannot run here: {run_why} (runs on: {fmt.notes.get('run_needs', 'CPU')})")
    parts.append("build here: " + ("yes" if build_ok else f"no ({build_why})"))
    return False, "; ".join(parts)


def row_path(cfg: BenchConfig, target: str, precision: str) -> bool:
    """Whether (target, precision) has a path: PyTorch on cfg.device, or the formats table."""
    if target == "torch":
        return precision in TORCH_PRECISIONS[cfg.device]
    return export_setting(target, precision) is not None


def no_path_reason(cfg: BenchConfig, target: str, precision: str) -> str:
    from farl_edge.export.formats import FORMATS

    if target == "torch" and cfg.device != "cpu":
        return f"PyTorch on {cfg.device} runs {', '.join(TORCH_PRECISIONS[cfg.device])}"
    if (target, precision) in NO_PATH:
        return NO_PATH[(target, precision)]
    fmt = FORMATS.get(target)
    if fmt is not None:
        return f"{target} exports {', '.join(fmt.precisions)} (formats table), not {precision}"
    return f"{target} has no {precision} path"


def plan(cfg: BenchConfig, availability: Callable[[str], tuple[bool, str]] | None = None):
    """(rows to measure or list as unavailable, [(target, precision, why) not measured])."""
    if availability is None:
        availability = lambda t: target_availability(t, cfg.device)  # noqa: E731 - looked up at call time
    rows: list[Row] = []
    skipped: list[dict] = []
    avail = {t: availability(t) for t in dict.fromkeys(["torch", *cfg.targets])}
    for model in cfg.models:
        targets = list(dict.fromkeys(["torch", *cfg.targets]))
        for target in targets:
            precisions = cfg.precisions_for(target)
            if target == "torch" and "fp32" not in precisions:
                precisions.insert(0, "fp32")  # the reference is always measured
            for precision in precisions:
                if not row_path(cfg, target, precision):
                    why = no_path_reason(cfg, target, precision)
                    skipped.append({"model": model, "target": target, "precision": precision, "reason": why})
                    continue
                ok, why = avail[target]
                if not ok:
                    rows.append(Row(model, target, precision, "full", cfg.batches[0], status="unavailable", reason=why))
                    continue
                for batch in cfg.batches:
                    rows.append(Row(model, target, precision, "full", batch))
                for stage in ("backbone", "head"):
                    if stage in cfg.stages:
                        rows.append(Row(model, target, precision, stage, cfg.batches[0],
                                        status="planned" if (target == "torch" or stage == "backbone") else "derived"))
    return rows, skipped


# ----------------------------------------------------------------------------- models
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
    gmacs = count_macs(model, mcfg.input_size)
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

    size = info.cfg.input_size
    full = collect_op_shapes(model, size)
    out = {"full": full}
    if info.cfg.task != "backbone":
        bb = collect_op_shapes(backbone_module(info), size)
        out["backbone"] = bb
        head = {s: n - bb.get(s, 0) for s, n in full.items() if n - bb.get(s, 0) > 0}
        out["head"] = head
    return out


def measured_floors(rows: list, infos: dict, threads: int, device: str, log) -> tuple[dict, object]:
    """Time every op shape of the measured rows' models alone; {(model, stage, row precision): MeasuredFloor}.
    Runs after the rows (never beside them) and only for rows whose compute runs on this CPU; also
    returns the throughput cache (what each shape reached)."""
    from farl_edge.bench.floor import KERNEL_PRECISION, ThroughputCache, measured_floor

    cache = ThroughputCache(threads)
    wanted = sorted({(r.model, r.stage, r.precision) for r in rows
                     if r.model in infos and infos[r.model].op_shapes and r.data.get("median_ms")
                     and r.precision in KERNEL_PRECISION and runs_on_host_cpu(r.target, device)})
    if wanted:
        log(f"measured floor: timing {len({s for i in infos.values() for c in i.op_shapes.values() for s in c})} "
            f"op shapes alone")
    out = {}
    for model, stage, precision in wanted:
        counts = infos[model].op_shapes.get(stage)
        if counts:
            out[(model, stage, precision)] = measured_floor(counts, precision, cache)
    return out, cache


def kernel_throughput(cache) -> dict:
    """{kernel precision: {op class: TMAC/s}}, MAC-weighted over every shape measured in this run."""
    macs: dict = {}
    secs: dict = {}
    for (shape, precision), tmacs in cache.table.items():
        key = (precision, shape.op_class)
        macs[key] = macs.get(key, 0.0) + shape.macs
        secs[key] = secs.get(key, 0.0) + shape.macs / (tmacs * 1e12)
    out: dict = {}
    for (precision, op_class), m in sorted(macs.items()):
        out.setdefault(precision, {})[op_class] = m / secs[(precision, op_class)] / 1e12
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


def _changed_keys(recorded: dict, current: dict, keys) -> list[str]:
    return [k for k in keys if json.dumps(recorded.get(k), sort_keys=True) != json.dumps(current.get(k), sort_keys=True)]


def _card_drift(path: Path, mcfg) -> bool:
    from farl_edge.checkpoint import read_card

    return bool(_changed_keys(read_card(path), mcfg.to_dict(), ("vision", "taps", "input_size", "head")))


def backbone_module(info: ModelInfo):
    """The model's ViT as a backbone-task FaRLModel (same weights), for exporting the backbone stage."""
    from farl_edge.models import create_model
    from farl_edge.models.task_model import FaRLModel

    full = create_model(info.name, checkpoint=info.checkpoint, pretrained=info.pretrained)
    bcfg = dataclasses.replace(full.cfg, name=f"{full.cfg.name}-backbone", task="backbone", head=None, labels=None,
                               num_landmarks=None, weights=None, base=full.cfg.name,
                               description=f"backbone stage of {full.cfg.name} (benchmark)")
    bb = FaRLModel(bcfg)
    bb.backbone.load_state_dict(full.backbone.state_dict())
    return bb.eval()


# ----------------------------------------------------------------------------- exports
def export_kwargs(cfg: BenchConfig, target: str, export_precision: str) -> dict:
    """The ExportRequest fields this target's rows set (from the formats table)."""
    from farl_edge.export.formats import get_format

    fmt = get_format(target)
    kwargs: dict = {}
    if export_precision == "int8":
        kwargs["int8_mode"] = int8_mode_for(fmt, cfg.onnx_int8_mode)
    if cfg.export_options.get(target):
        kwargs["options"] = dict(cfg.export_options[target])
    return kwargs


def artifact_dir(cfg: BenchConfig, row: Row, export_precision: str) -> Path:
    from farl_edge.export.formats import get_format

    fmt = get_format(row.target)
    extra = ""
    if export_precision == "int8" and len(fmt.int8_modes) > 1:  # the mode is a choice: part of the name
        extra += f"-{int8_mode_for(fmt, cfg.onnx_int8_mode)}"
    options = cfg.export_options.get(row.target)
    if options:
        extra += "-o" + hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    return cfg.cache / "artifacts" / f"{row.model}-{row.stage}-{row.target}-{export_precision}{extra}-b{row.batch}"


def stale_reason(manifest_path: Path, info: ModelInfo, row: Row) -> str | None:
    """Why a cached artifact no longer matches the model (config or weights changed), or None."""
    if not manifest_path.is_file():
        return None
    from farl_edge.registry import get_config

    manifest = json.loads(manifest_path.read_text())
    cached = manifest.get("model", {})
    current = get_config(info.name).to_dict()
    keys = ("vision", "taps", "input_size") if row.stage == "backbone" else tuple(current)
    changed = _changed_keys(cached, current, keys)
    if changed:
        return f"model config changed ({', '.join(changed)})"
    # The backbone stage is exported from a module, so its manifest has no weights hash: the sidecar has it.
    sidecar = _source_sidecar(manifest_path.parent)
    recorded = (json.loads(sidecar.read_text()) if sidecar.is_file() else manifest.get("weights", {})).get("sha256")
    current_sha = source_weights_sha(info)
    if recorded and current_sha and recorded != current_sha:
        return "weights changed"
    return None


def _source_sidecar(dest: Path) -> Path:
    # Beside the artifact, not in it: files inside are hashed by the manifest.
    return dest.parent / f"{dest.name}.source.json"


def source_weights_sha(info: ModelInfo) -> str | None:
    from farl_edge.export import manifest as mf
    from farl_edge.registry import get_config, weights_path

    file = info.checkpoint or (weights_path(get_config(info.name)) if info.pretrained else None)
    return mf.sha256_file(file) if file and Path(file).is_file() else None


def ensure_artifact(cfg: BenchConfig, info: ModelInfo, row: Row, log) -> tuple[Path, dict]:
    """The cached artifact for ``row`` (exported now when missing) and export facts for the report."""
    from farl_edge.export import pipeline
    from farl_edge.export.request import ExportRequest
    from farl_edge.export.validate import ParityError

    setting = export_setting(row.target, row.precision)
    if setting is None:
        raise ValueError(f"{row.target} has no {row.precision} path ({no_path_reason(cfg, row.target, row.precision)})")
    export_precision = setting.precision
    dest = artifact_dir(cfg, row, export_precision)
    manifest_path = dest / "manifest.json"
    facts: dict = {"artifact": str(dest)}
    stale = stale_reason(manifest_path, info, row)
    if stale:
        log(f"re-export {dest.name}: {stale}")
    if stale or not manifest_path.is_file():
        log(f"export {dest.name}")
        model = backbone_module(info) if row.stage == "backbone" else info.name
        kwargs = dict(model=model, target=row.target, precision=export_precision, output=dest, batch=row.batch,
                      eval_size=cfg.export_eval_size, calib_size=cfg.calib_size, keep_failed=True, force=True,
                      log=lambda m: None)
        if row.stage != "backbone":
            kwargs.update(checkpoint=info.checkpoint, pretrained=info.pretrained)
        if info.eval_dir:
            kwargs["eval_data"] = info.eval_dir
        if info.calib_dir and export_precision == "int8":
            kwargs["calib"] = info.calib_dir
        kwargs.update(export_kwargs(cfg, row.target, export_precision))
        t0 = time.time()
        try:
            pipeline.export(ExportRequest(**kwargs))
        except ParityError as e:
            log(f"  {dest.name}: parity validation failed (kept, marked failed): "
                + ", ".join(f"{c.stage}/{c.name}" for c in e.report.failed))
        facts["export_s"] = round(time.time() - t0, 1)
        _source_sidecar(dest).write_text(json.dumps({"model": info.name, "sha256": source_weights_sha(info)}))
    manifest = json.loads(manifest_path.read_text())
    facts["size_mb"] = sum(f["bytes"] for f in manifest["files"].values()) / 1e6
    status = manifest.get("status")
    facts["export_validation"] = "passed" if status == "ok" else (
        f"unvalidated: {manifest.get('validation', {}).get('reason', '?')}" if status == "unvalidated"
        else f"failed: {manifest.get('failure', '?')}")
    build = manifest.get("build", {})
    if "quantization" in build:
        q = build["quantization"]
        facts["quantization"] = {k: q[k] for k in ("mode", "tool", "model_type", "preset", "FakeQuantize", "op_types",
                                                    "QuantizeLinear", "integer_ops") if k in q}
    return dest, facts


# ----------------------------------------------------------------------------- measuring
def _worker(spec: dict, workdir: Path, timeout: float, threads: int) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=workdir, delete=False) as f:
        json.dump(spec, f)
        spec_path = Path(f.name)
    result_path = spec_path.with_suffix(".result.json")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1",
           "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run([sys.executable, "-m", "farl_edge.bench.worker", str(spec_path), str(result_path)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"worker timed out after {timeout:.0f} s"}
    finally:
        spec_path.unlink(missing_ok=True)
    if not result_path.is_file():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        return {"ok": False, "error": f"worker exited {proc.returncode}: {' | '.join(tail)}"[:500]}
    result = json.loads(result_path.read_text())
    result_path.unlink(missing_ok=True)
    return result


def prepare_inputs(cfg: BenchConfig, info: ModelInfo) -> dict:
    """Real face crops for timing (the first max-batch faces) and the eval inputs, saved as .npy."""
    import numpy as np

    from farl_edge.export.calibration import open_faces

    folder = cfg.cache / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    n_eval = cfg.eval_limit
    need = max(max(cfg.batches), n_eval)
    timing_path = folder / f"{info.name}-timing-{max(cfg.batches)}.npy"
    eval_path = folder / f"{info.name}-eval-{n_eval}.npy"
    if info.eval_dir is None:
        x = np.random.default_rng(0).random((max(cfg.batches), 3, info.cfg.input_size, info.cfg.input_size),
                                            dtype=np.float32)
        np.save(timing_path, x)
        return {"timing": str(timing_path), "eval": None, "source": "random (no evaluation data found)"}
    faces = open_faces(info.eval_dir, n_eval if n_eval else max(cfg.batches), purpose="evaluation")
    x = faces.inputs(info.cfg)
    np.save(timing_path, x[:max(cfg.batches)] if len(x) >= max(cfg.batches) else x)
    if n_eval:
        np.save(eval_path, x[:n_eval])
    del need
    return {"timing": str(timing_path), "eval": str(eval_path) if n_eval else None,
            "source": f"{faces.source} ({len(faces)} of {faces.total} faces, evenly spaced)"}


def measure_row(cfg: BenchConfig, info: ModelInfo, row: Row, inputs: dict, refs: dict, log) -> None:
    spec = {"model": info.name, "checkpoint": info.checkpoint, "pretrained": info.pretrained, "target": row.target,
            "precision": row.precision, "stage": row.stage, "batch": row.batch, "threads": cfg.threads,
            "policy": cfg.policy.to_dict(), "timing_input": inputs["timing"]}
    if row.target == "torch":
        spec["device"] = cfg.device
        row.data["size_mb"] = info.param_bytes / 1e6
        if row.precision != "fp32":
            row.notes.append("autocast: weights stay fp32")
        elif cfg.device == "cuda":
            row.notes.append("CUDA, TF32 off")
    else:
        from farl_edge.export.formats import get_format

        backend = get_format(row.target).backend
        path, facts = ensure_artifact(cfg, info, row, log)
        spec["artifact"] = str(path)
        spec["backend"] = backend
        # threads only for the runtimes that take a thread count (the CPU ones), then the row's own options
        spec["runtime_options"] = {**({"threads": cfg.threads} if backend_takes(backend, "threads") else {}),
                                   **export_setting(row.target, row.precision).runtime_options}
        row.data.update({k: v for k, v in facts.items() if k != "artifact"})
        row.data["artifact"] = path.name
        if not facts["export_validation"].startswith("passed"):
            row.notes.append("export parity validation " + facts["export_validation"])
    first_batch = row.batch == cfg.batches[0]
    if cfg.eval_limit and first_batch and row.stage in ("full", "backbone") and info.eval_dir:
        ref_key = (info.name, row.stage)
        ev = {"data": info.eval_dir, "limit": cfg.eval_limit, "inputs": inputs["eval"], "batch_size": 8}
        if row.target == "torch" and row.precision == "fp32":
            ev["save_reference"] = str(cfg.cache / "inputs" / f"{info.name}-{row.stage}-reference.npz")
            refs[ref_key] = ev["save_reference"]
        elif ref_key in refs:
            ev["reference"] = refs[ref_key]
        spec["eval"] = ev
    log(f"measure {info.name} {row.target} {row.precision} {row.stage} b{row.batch}")
    result = _worker(spec, cfg.cache / "work", cfg.worker_timeout, cfg.threads)
    if not result.get("ok"):
        row.status, row.reason = "failed", result.get("error", "unknown error")
        log(f"  failed: {row.reason}")
        return
    row.status = "ok"
    t = result["timing"]
    row.data.update({
        "median_ms": t["median_ms"], "p90_ms": t["p90_ms"], "p99_ms": t["p99_ms"], "mean_ms": t["mean_ms"],
        "min_ms": t["min_ms"], "iters": t["iters"], "stable": t["stable"], "timing_s": t["timing_s"],
        "fps": 1000.0 * row.batch / t["median_ms"], "cold_start_ms": result["cold_start_ms"],
        "load_ms": result["load_ms"], "first_ms": result["first_ms"], "import_ms": result["import_ms"],
        "peak_rss_mb": result["peak_rss_mb"], "rss_baseline_mb": result["rss_baseline_mb"],
        "rss_after_load_mb": result["rss_after_load_mb"], "samples_ms": t["samples_ms"],
    })
    if result.get("peak_gpu_mb") is not None:
        row.data["peak_gpu_mb"] = result["peak_gpu_mb"]
    if "session" in result:
        row.data["session"] = result["session"]
        used = result["session"].get("inference_precision_used")
        if used:
            row.notes.append(f"OpenVINO inference precision used: {used}")
    for key in ("metrics", "cosine", "landmark_shift_px", "eval_faces", "eval_s"):
        if key in result:
            row.data[key] = result[key]
    if "eval" in spec and spec["eval"].get("save_reference"):
        row.data["cosine"] = {"output": "reference", "mean": 1.0, "min": 1.0}
    log(f"  median {t['median_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms ({t['iters']} iters)"
        + (f", cosine {result['cosine']['mean']:.6f}" if "cosine" in result else ""))


# ----------------------------------------------------------------------------- derived columns
def derive(rows: list[Row], infos: dict, cpu: hardware.CpuInfo, threads: int, batches: list[int],
           device: str = "cpu", floors: dict | None = None) -> None:
    """× torch, GMACs, floor (rows on the host CPU), Δmetric; head stage of exported targets = full − backbone.
    Rows of models that never started (time budget) are left as they are."""
    by_key = {r.key: r for r in rows}
    cores = hardware.cores_used(cpu, threads)
    for r in rows:
        if r.model not in infos:
            continue
        if r.status == "derived":
            full = by_key.get((r.model, r.target, r.precision, "full", r.batch))
            bb = by_key.get((r.model, r.target, r.precision, "backbone", r.batch))
            if full and bb and full.status == "ok" and bb.status == "ok":
                diff = full.data["median_ms"] - bb.data["median_ms"]
                if diff > 0:
                    r.data["median_ms"] = diff
                    r.data["fps"] = 1000.0 * r.batch / diff
                    r.notes.append("derived: full − backbone medians")
                else:
                    # A measurement that says nothing, not a broken row: reported, not counted as failed.
                    r.status, r.reason = "unreliable", (
                        f"derived head time is not positive (full {full.data['median_ms']:.1f} ms, backbone "
                        f"{bb.data['median_ms']:.1f} ms): timing noise; rerun on an idle machine")
            elif any(x is not None and x.status == "skipped" for x in (full, bb)):
                r.status, r.reason = "skipped", "its full or backbone row was skipped (time budget)"
            else:
                r.status, r.reason = "failed", "needs measured full and backbone rows"
    for r in rows:
        info = infos.get(r.model)
        if info is None:
            continue
        gm = info.gmacs.get({"full": "total"}.get(r.stage, r.stage), info.gmacs["total"])
        r.data["gmacs"] = gm
        if r.data.get("median_ms"):
            # The floor is this CPU's: rows that run on a GPU / Core ML get none.
            if r.precision in hardware.DTYPES and runs_on_host_cpu(r.target, device):
                fl = hardware.floor_ms(gm, r.precision, cpu.flags, cores, cpu.mhz, r.batch)
                r.data["floor_ms"] = fl
                r.data["x_floor"] = r.data["median_ms"] / fl
                r.data["pct_of_floor"] = 100.0 * fl / r.data["median_ms"]
            mf = (floors or {}).get((r.model, r.stage, r.precision))
            if mf is not None:
                # measured at batch 1; a batch of b costs b times the arithmetic
                r.data["measured_floor_ms"] = mf.ms * r.batch
                r.data["x_measured_floor"] = r.data["median_ms"] / r.data["measured_floor_ms"]
                r.data["measured_floor"] = {"kernel_precision": mf.precision, "per_class_ms": mf.per_class_ms,
                                            "kernel_throughput": mf.kernel_throughput}
            ref = by_key.get((r.model, "torch", "fp32", r.stage, r.batch))
            if ref and ref.data.get("median_ms"):
                r.data["x_torch"] = ref.data["median_ms"] / r.data["median_ms"]
        # accuracy columns: measured once per (target, precision, stage) at the first batch
        src = by_key.get((r.model, r.target, r.precision, r.stage, batches[0]))
        if src is not r and src is not None:
            for key in ("metrics", "cosine", "landmark_shift_px"):
                if key in src.data:
                    r.data[key] = src.data[key]
            if "metrics" in src.data or "cosine" in src.data:
                r.data["accuracy_from_batch"] = batches[0]
        metric, _ = METRIC.get(info.cfg.task, (None, None))
        ref = by_key.get((r.model, "torch", "fp32", "full", batches[0]))
        if metric and r.stage == "full" and "metrics" in r.data and ref is not None and "metrics" in ref.data:
            r.data["metric_name"] = metric
            r.data["metric"] = r.data["metrics"].get(metric)
            if r.data["metric"] is not None and ref.data["metrics"].get(metric) is not None:
                r.data["delta"] = r.data["metric"] - ref.data["metrics"][metric]


def gpus() -> list[dict]:
    """This machine's NVIDIA GPUs through the CUDA driver ([] without one); torch-free."""
    try:
        from farl_edge.runtime.backends.tensorrt_backend import cuda_devices

        return cuda_devices()
    except Exception:  # noqa: BLE001 - no driver, no GPU: nothing to list
        return []


def environment(cpu: hardware.CpuInfo, threads: int, device: str = "cpu") -> dict:
    from farl_edge.export.manifest import library_versions

    versions = library_versions()
    from importlib import metadata

    for extra in ("psutil", "matplotlib", "coremltools", "tensorrt", "tensorrt-rtx-cu12-bindings"):
        try:
            versions[extra] = metadata.version(extra)
        except metadata.PackageNotFoundError:
            pass
    if device == "cuda":
        try:
            import torch

            versions["torch_cuda"] = torch.version.cuda
        except ImportError:
            pass
    cores = hardware.cores_used(cpu, threads)
    return {"cpu": cpu.to_dict(), "isa": cpu.isa, "machine_class": cpu.machine_class(threads), "threads": threads,
            "cores_used": cores, "peak": hardware.peak_table(cpu, cores), "platform": platform.platform(),
            "device": device, "gpus": gpus(), "versions": versions}


# ----------------------------------------------------------------------------- entry point
def settings(cfg: BenchConfig) -> dict:
    return {"targets": cfg.targets, "precisions": cfg.precisions, "batches": cfg.batches, "stages": cfg.stages,
            "threads": cfg.threads, "device": cfg.device, "timing": cfg.policy.to_dict(), "eval_limit": cfg.eval_limit,
            "calib_size": cfg.calib_size, "onnx_int8_mode": cfg.onnx_int8_mode, "export_options": cfg.export_options,
            "export_eval_size": cfg.export_eval_size, "budget_s": cfg.budget_s,
            "data_root": str(cfg.data_root) if cfg.data_root else None,
            "measurement": "one fresh subprocess per row (peak RSS, cold start)"}


def dry_run(cfg: BenchConfig, rows: list[Row], skipped: list[dict]) -> dict:
    """The plan without running it: rows, the artifacts each exported row needs, the data found."""
    from farl_edge.bench import report
    from farl_edge.registry import get_config

    exports: dict[str, dict] = {}
    for r in rows:
        if r.target == "torch" or r.status != "planned":
            continue
        setting = export_setting(r.target, r.precision)
        dest = artifact_dir(cfg, r, setting.precision)
        exports.setdefault(dest.name, {"target": r.target, "precision": setting.precision, "stage": r.stage,
                                       "batch": r.batch, "cached": (dest / "manifest.json").is_file(),
                                       "export": export_kwargs(cfg, r.target, setting.precision)})
        r.data["artifact"] = dest.name
        if setting.runtime_options:
            r.data["runtime_options"] = setting.runtime_options
    models = {}
    for name in cfg.models:
        task = get_config(name).task
        found = {which: data_dir(task, which, cfg.data_root) for which in ("eval", "calib")}
        models[name] = {"task": task, **{f"{k}_data": str(v) if v else None for k, v in found.items()}}
    data = {"dry_run": True, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": cfg.command,
            "environment": {"platform": platform.platform(), "device": cfg.device, "gpus": gpus()},
            "settings": settings(cfg), "models": models, "rows": [r.to_dict() for r in rows],
            "not_measured": skipped, "exports": exports}
    report.write_plan(data, cfg.out)
    return data


def run_bench(cfg: BenchConfig) -> dict:
    """Run the whole matrix; returns the report dict (also written to ``cfg.out``)."""
    from farl_edge.bench import report

    log = cfg.log
    started = time.time()
    rows, skipped = plan(cfg)
    if cfg.dry_run:
        return dry_run(cfg, rows, skipped)
    cpu = hardware.detect_cpu(cfg.cpu_mhz)
    env = environment(cpu, cfg.threads, cfg.device)
    log(f"{cpu.model}: {cpu.isa}, {env['cores_used']} cores at {cpu.mhz:.0f} MHz ({cpu.mhz_source}), "
        f"{cfg.threads} threads" + "".join(f"; GPU {g['name']} ({g['compute_capability']})" for g in env["gpus"]))
    infos: dict[str, ModelInfo] = {}
    refs: dict = {}

    def spent() -> bool:
        return cfg.budget_s is not None and time.time() - started > cfg.budget_s

    def skip(r: Row) -> None:
        r.status, r.reason = "skipped", f"time budget of {cfg.budget_s:.0f} s spent before this row"

    for model in cfg.models:
        mine = [r for r in rows if r.model == model and r.status == "planned"]
        if spent():
            for r in rows:
                if r.model == model and r.status in ("planned", "derived"):
                    skip(r)
            log(f"{model}: skipped (time budget of {cfg.budget_s:.0f} s spent)")
            continue
        info = resolve_weights(cfg, model, log)
        infos[model] = info
        if cfg.export_only:
            for r in mine:
                if r.target == "torch":
                    continue
                if spent():
                    skip(r)
                    continue
                try:
                    ensure_artifact(cfg, info, r, log)
                except Exception as e:
                    log(f"  export failed: {type(e).__name__}: {e}"[:300])
            continue
        inputs = prepare_inputs(cfg, info)
        info_inputs = inputs["source"]
        # torch fp32 first (the reference), then the rest in plan order
        mine.sort(key=lambda r: (not (r.target == "torch" and r.precision == "fp32"), ))
        for r in mine:
            if spent():
                skip(r)
                continue
            try:
                measure_row(cfg, info, r, inputs, refs, log)
            except Exception as e:  # an export that crashes is a failed row, not a failed bench
                r.status, r.reason = "failed", f"{type(e).__name__}: {e}"[:500]
                log(f"  failed: {r.reason}")
        info.__dict__["inputs_source"] = info_inputs
    if cfg.export_only:
        return {"export_only": True, "cache": str(cfg.cache)}
    floors, cache = (measured_floors(rows, infos, cfg.threads, cfg.device, log) if cfg.measured_floor
                     else ({}, None))
    derive(rows, infos, cpu, cfg.threads, cfg.batches, cfg.device, floors)
    data = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": cfg.command,
        "environment": env,
        "settings": settings(cfg),
        "models": {n: {"task": i.cfg.task, "input_size": i.cfg.input_size, "weights": i.weights,
                       "gmacs": i.gmacs, "params_m": i.params_m, "eval_data": i.__dict__.get("inputs_source"),
                       "metric": METRIC.get(i.cfg.task, (None,))[0]} for n, i in infos.items()},
        "rows": [r.to_dict() for r in rows],
        "kernel_throughput": kernel_throughput(cache) if cache is not None else {},
        "not_measured": skipped,
        "seconds": round(time.time() - started, 1),
    }
    report.write_all(data, cfg.out)
    return data
