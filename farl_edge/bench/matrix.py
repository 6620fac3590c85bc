"""The bench plan: which rows a :class:`BenchConfig` asks for, which of them can run here, and why
the rest cannot.

Targets and precisions come from the formats table (:data:`farl_edge.export.formats.FORMATS`);
PyTorch precisions per device from :data:`TORCH_PRECISIONS`; the bench-only runtime variants from
:data:`RUNTIME_VARIANTS`. :func:`plan` turns a config into :class:`Row` objects (planned,
derived or unavailable) and the (target, precision) pairs that have no path.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from farl_edge.bench.timing import TimingPolicy
from farl_edge.errors import UserError

ALL_PRECISIONS = ("fp32", "bf16", "fp16", "int8")  # plus any other precision of the formats table
STAGES = ("full", "backbone", "head")
DEVICES = ("cpu", "cuda")  # where the PyTorch rows run (exported rows run where their runtime runs)
METRIC = {"parsing": ("f1_mean", "higher"), "alignment": ("nme_io", "lower")}
# device → PyTorch precisions (autocast dtype; fp32 = eager, and TF32 off on CUDA)
TORCH_PRECISIONS = {"cpu": {"fp32": None, "bf16": "bfloat16"},
                    "cuda": {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}}
# What a PyTorch user would pick instead of an export: torch.compile (inductor) on the CPU, fp32,
# bf16 autocast, and int8 by PT2E quantisation with the x86 inductor quantiser (torchao).
TORCH_COMPILE = "torch-compile"
TORCH_COMPILE_PRECISIONS = ("fp32", "bf16", "int8")
TORCH_TARGETS = ("torch", TORCH_COMPILE)  # rows that run PyTorch in the worker (no artifact)


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
    (TORCH_COMPILE, "fp16"): "torch.compile on the CPU: fp32, bf16 autocast and PT2E int8 (no fast fp16 kernels)",
}


def known_targets() -> tuple[str, ...]:
    """torch, torch-compile and every export format of the formats table."""
    from farl_edge.export.formats import FORMATS

    return (*TORCH_TARGETS, *FORMATS)


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
    if target in TORCH_TARGETS:
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
    except Exception:  # noqa: BLE001 - unknown backend, missing annotations: pass nothing extra
        return False
    return option in params


@dataclass
class BenchConfig:
    """One bench run's settings; a setting that cannot work raises UserError (a ValueError)."""

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
            raise UserError(f"unknown targets {bad}; known: {', '.join(targets)}")
        bad = [p for p in self.precisions if p.rpartition(":")[2] not in precisions
               or (":" in p and p.rpartition(":")[0] not in targets)]
        if bad:
            raise UserError(f"unknown precisions {bad}; known: {', '.join(precisions)} "
                            f"(optionally as TARGET:PRECISION, targets {', '.join(targets)})")
        bad = [s for s in self.stages if s not in STAGES]
        if bad or "full" not in self.stages:
            raise UserError(f"stages must include 'full' and be among {STAGES}, not {self.stages}")
        if not self.batches or any(int(b) < 1 for b in self.batches):
            raise UserError("batch sizes must be >= 1")
        self.batches = sorted({int(b) for b in self.batches})
        modes = sorted({m for f in FORMATS.values() for m in f.int8_modes})
        if self.onnx_int8_mode not in modes:
            raise UserError(f"int8 mode must be one of {', '.join(modes)}, not {self.onnx_int8_mode!r}")
        for target, opts in self.export_options.items():
            if target not in FORMATS:
                raise UserError(f"export options for unknown target {target!r}; known: {', '.join(FORMATS)}")
            unknown = sorted(set(opts) - set(FORMATS[target].options))
            if unknown:
                raise UserError(f"target {target!r} takes no option {', '.join(unknown)}; its options: "
                                f"{', '.join(FORMATS[target].options) or 'none'}")
        if self.device not in DEVICES:
            raise UserError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.budget_s is not None and self.budget_s <= 0:
            raise UserError("the time budget must be > 0 seconds")
        if self.checkpoint and len(self.models) != 1:
            raise UserError("--checkpoint applies to one model only")
        if self.eval_limit < 0 or self.calib_size < 1:
            raise UserError("--eval-limit must be >= 0 and the calibration size >= 1")
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
    if target == TORCH_COMPILE:
        return torch_compile_availability(device)
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
        except Exception as e:  # noqa: BLE001 - a broken optional install is a reason, not a crash
            build_ok, build_why = False, f"{type(e).__name__}: {e}"
    if run_ok and build_ok:
        return True, ""
    parts = []
    if not run_ok:
        parts.append(f"cannot run here: {run_why} (runs on: {fmt.notes.get('run_needs', 'CPU')})")
    parts.append("build here: " + ("yes" if build_ok else f"no ({build_why})"))
    return False, "; ".join(parts)


def torch_compile_availability(device: str = "cpu") -> tuple[bool, str]:
    """torch.compile's CPU path needs torch, a C++ compiler (inductor's code generation) and, for
    PT2E int8, torchao."""
    import importlib.util
    import shutil

    if device != "cpu":
        return False, "torch-compile rows run on the CPU (--device cpu)"
    missing = [m for m in ("torch", "torchao") if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"needs {', '.join(missing)} (pip install 'farl-edge[export]')"
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return False, "needs a C++ compiler for inductor's CPU code (e.g. apt install g++)"
    return True, ""


def row_path(cfg: BenchConfig, target: str, precision: str) -> bool:
    """Whether (target, precision) has a path: PyTorch on cfg.device, or the formats table."""
    if target == "torch":
        return precision in TORCH_PRECISIONS[cfg.device]
    if target == TORCH_COMPILE:
        return cfg.device == "cpu" and precision in TORCH_COMPILE_PRECISIONS
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
                for stage in ("backbone", "head") if target != TORCH_COMPILE else ():  # whole model only
                    if stage in cfg.stages:
                        rows.append(Row(model, target, precision, stage, cfg.batches[0],
                                        status="planned" if (target == "torch" or stage == "backbone") else "derived"))
    return rows, skipped
