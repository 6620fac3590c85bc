"""``farl-edge bench``: registered by farl_edge.cli (``register(subparsers)``).

``--preset gpu`` and ``--preset mac`` are the one command for a machine with an NVIDIA GPU
(PyTorch CUDA fp32/fp16/bf16, TensorRT fp16/int8) and for a Mac (Core ML); ``--preset cpu`` is
the default. A preset only changes option defaults (:data:`PRESETS`): every flag given on the
command line wins. The flags, their defaults and the effective command all come from one typed
:class:`BenchOptions`. ``--dry-run`` prints and writes the plan without exporting or measuring.

Exit status: 0 every planned row measured (unavailable targets and rows skipped by the time
budget are listed, not errors); 1 some row failed (the report is still written and names it);
2 user error.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

# The models of the GPU / Mac runs: the small trained alignment model and FaRL-B/16 at 448 px for
# both tasks (random weights there: speed and parity are real, task accuracy is not).
DEVICE_MODELS = "farl-small-300w,farl-b16-lapa-448,farl-b16-300w-448"
PRESETS = {
    "cpu": {},
    "gpu": {"model": DEVICE_MODELS, "targets": "torch,tensorrt,tensorrt-rtx",
            "precisions": "torch:fp32,torch:fp16,torch:bf16,tensorrt:fp16,tensorrt:int8,tensorrt-rtx:fp16,"
                          "tensorrt-rtx:int8",
            "device": "cuda", "stages": "full", "iters": 50, "min_time": 1.0, "max_time": 20.0, "warmup": 10,
            "eval_limit": 8, "calib_size": 16},
    "mac": {"model": DEVICE_MODELS, "targets": "torch,coreml",
            "precisions": "torch:fp32,coreml:fp32,coreml:fp16,coreml:int8", "stages": "full", "eval_limit": 16,
            "calib_size": 16},
}
_UNSET = object()


def _flag(*flags: str, help: str | None = None, default=_UNSET, command: bool = True, **argparse_kw):
    """A bench option: its --flag(s), help (``{default}`` is filled in), argparse settings, and
    ``default``: given, the option is filled from the preset, then this value, when the command line
    leaves it out. ``command``: spelled out in the effective command (command.txt)."""
    meta = {"flags": flags, "help": help, "command": command, "argparse": argparse_kw}
    if default is not _UNSET:
        meta["default"] = default
    return field(default=argparse_kw.get("default"), metadata=meta)


@dataclass(kw_only=True)
class BenchOptions:
    """The ``farl-edge bench`` command line, one field per flag (in --help order): the flags, their
    defaults, the presets' keys and the effective command all come from here."""

    preset: str | None = _flag("--preset", choices=sorted(PRESETS), help=(
        "option defaults for a machine: cpu (the default), gpu (NVIDIA GPU: PyTorch CUDA fp32/fp16/bf16 + TensorRT "
        "fp16/int8, models " + DEVICE_MODELS + "), mac (Core ML fp32/fp16/int8, same models); flags given here win"))
    model: str | None = _flag("--model", default=None, help="registry name(s), comma-separated (default: the preset's)")
    targets: str | None = _flag("--targets", default=None, help="comma-separated (default: torch and every export "
                                                                "format; the ones that cannot run here are listed "
                                                                "with the reason)")
    precisions: str | None = _flag("--precisions", default="fp32,bf16,int8", help=(
        "comma-separated among fp32,bf16,fp16,int8; TARGET:PRECISION for one target only, e.g. "
        "torch:fp16,tensorrt:int8 (default {default})"))
    batch: str | None = _flag("--batch", default="1,8", help="batch sizes, comma-separated (default {default})")
    device: str | None = _flag("--device", default="cpu", choices="DEVICES",
                               help="where the PyTorch rows run (default cpu; gpu preset: cuda)")
    threads: int | None = _flag("--threads", type=int, help="threads per row (default: all CPUs)")
    iters: int | None = _flag("--iters", default=10, type=int, help="minimum timed iterations (default {default})")
    min_time: float | None = _flag("--min-time", default=2.0, type=float,
                                   help="minimum timed seconds per row (default {default})")
    max_time: float | None = _flag("--max-time", default=60.0, type=float,
                                   help="maximum timed seconds per row (default {default})")
    max_iters: int | None = _flag("--max-iters", default=1000, type=int,
                                  help="maximum timed iterations (default {default})")
    warmup: int | None = _flag("--warmup", default=2, type=int, help="warm-up calls (default {default})")
    rel_tol: float | None = _flag("--rel-tol", default=0.02, type=float,
                                  help="median stability tolerance (default {default})")
    eval_limit: int | None = _flag("--eval-limit", default=32, type=int,
                                   help="evaluation faces for the accuracy columns (0: none; default {default})")
    stages: str | None = _flag("--stages", default="full,backbone,head",
                               help="stages to time (full always; default {default})")
    no_stages: bool = _flag("--no-stages", action="store_true", help="whole model only")
    out: str | None = _flag("--out", default="bench-results", help="report folder (artifacts cached in OUT/cache)")
    cache: str | None = _flag("--cache", help="artifact / weight cache folder (default OUT/cache)")
    data_root: str | None = _flag("--data-root", help=(
        "evaluation / calibration faces, laid out like ../shared/data (300w/test-helen, 300w/train, "
        "celebamask-hq/val, celebamask-hq/train); default $FARL_EDGE_DATA, else ../shared/data"))
    checkpoint: str | None = _flag("--checkpoint", help="weights for the (single) model")
    random_init: bool = _flag("--random-init", action="store_true",
                              help="seeded random weights even when weights are shipped")
    calib_size: int | None = _flag("--calib-size", default=32, type=int,
                                   help="INT8 calibration faces (default {default})")
    export_eval_size: int | None = _flag("--export-eval-size", default=4, type=int,
                                         help="faces for each export's own parity validation (default {default})")
    onnx_int8_mode: str | None = _flag("--int8-mode", "--onnx-int8-mode", default="dynamic",
                                       choices=["dynamic", "static"], help=(
        "INT8 flavour where a format offers a choice (ONNX Runtime; default dynamic: the fastest measured); the "
        "other formats use their own"))
    export_option: list[str] | None = _flag("--export-option", action="append", metavar="TARGET:KEY=VALUE", help=(
        "builder option of a target (its Format.options, e.g. tensorrt:builder_optimization_level=5); repeatable"))
    budget_s: float | None = _flag("--budget-s", default=None, type=float,
                                   help="stop starting rows after this many seconds; the rest are listed as skipped")
    cpu_mhz: float | None = _flag("--cpu-mhz", type=float,
                                  help="clock for the floor (default: lscpu max MHz / /proc/cpuinfo)")
    no_measured_floor: bool = _flag("--no-measured-floor", action="store_true", help=(
        "skip timing each GEMM / attention / conv shape of the model alone (the measured floor, after the rows)"))
    export_only: bool = _flag("--export-only", action="store_true", command=False,
                              help="only fill the artifact cache (exports need no quiet machine; timing does)")
    dry_run: bool = _flag("--dry-run", action="store_true", help=(
        "print and write the plan (rows, availability, artifacts to export, data found); export and measure nothing"))
    quiet: bool = _flag("--quiet", action="store_true", command=False)

    @classmethod
    def add_arguments(cls, parser) -> None:
        from farl_edge.bench.matrix import DEVICES

        for f in dataclasses.fields(cls):
            kw = dict(f.metadata["argparse"])
            if kw.get("choices") == "DEVICES":
                kw["choices"] = DEVICES
            text = f.metadata["help"]
            if text is not None:
                kw["help"] = text.replace("{default}", str(f.metadata.get("default")))
            parser.add_argument(*f.metadata["flags"], dest=f.name, **kw)

    @classmethod
    def from_args(cls, args) -> BenchOptions:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def resolved(self) -> BenchOptions:
        """The options not given on the command line filled from the preset, then the defaults."""
        preset = PRESETS[self.preset or "cpu"]
        filled = {f.name: preset.get(f.name, f.metadata["default"]) for f in dataclasses.fields(self)
                  if "default" in f.metadata and getattr(self, f.name) is None}
        out = dataclasses.replace(self, **filled)
        if out.no_stages:
            out.stages = "full"
        return out

    def command_line(self) -> str:
        """The effective command (every option spelled out), for command.txt and the report."""
        parts = ["farl-edge", "bench"]
        flags, fields = [], [f for f in dataclasses.fields(self) if f.metadata["command"]]
        for f in fields:
            value, action = getattr(self, f.name), f.metadata["argparse"].get("action")
            if action == "store_true":
                if value:
                    flags.append(f"--{f.name.replace('_', '-')}")
            elif action != "append" and value is not None:
                parts += [f"--{f.name.replace('_', '-')}", str(value)]
        for item in self.export_option or []:
            parts += ["--export-option", item]
        return " ".join(shlex.quote(p) for p in parts + flags)


# Option defaults (field → value; None for targets means every target of the formats table).
DEFAULTS = {f.name: f.metadata["default"] for f in dataclasses.fields(BenchOptions) if "default" in f.metadata}
_unknown = {k for preset in PRESETS.values() for k in preset} - set(DEFAULTS)
assert not _unknown, f"PRESETS set options without a default: {_unknown}"


def _export_options(items, known_targets) -> dict:
    """``TARGET:KEY=VALUE`` items → {target: {key: value}} (values parsed as JSON when they are)."""
    from farl_edge.cli import UserError

    out: dict = {}
    for item in items or []:
        target, sep, rest = item.partition(":")
        key, eq, value = rest.partition("=")
        if not sep or not eq or not key:
            raise UserError(f"--export-option takes TARGET:KEY=VALUE (e.g. tensorrt:max_batch=8), not {item!r}")
        if target not in known_targets:
            raise UserError(f"--export-option: unknown target {target!r}; known: {', '.join(known_targets)}")
        try:
            value = json.loads(value)
        except ValueError:
            pass
        out.setdefault(target, {})[key] = value
    return out


def _list(value: str, what: str, known=None) -> list[str]:
    from farl_edge.cli import UserError

    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise UserError(f"--{what} is empty")
    if known is not None:
        bad = [v for v in items if v not in known]
        if bad:
            raise UserError(f"unknown {what} {', '.join(bad)}; known: {', '.join(known)}")
    return items


def _ints(value: str, what: str) -> list[int]:
    from farl_edge.cli import UserError

    try:
        out = [int(v) for v in _list(value, what)]
    except ValueError:
        raise UserError(f"--{what} takes comma-separated positive integers, not {value!r}") from None
    if any(v < 1 for v in out):
        raise UserError(f"--{what} takes positive integers, not {value!r}")
    return out


def cmd_bench(args) -> int:
    from farl_edge.bench.matrix import STAGES, BenchConfig, known_targets
    from farl_edge.bench.runner import run_bench
    from farl_edge.bench.timing import TimingPolicy
    from farl_edge.cli import UserError
    from farl_edge.registry import get_config

    opts = BenchOptions.from_args(args).resolved()
    if not opts.model:
        raise UserError("--model is required (or a --preset that names the models: gpu, mac)")
    models = _list(opts.model, "model")
    for m in models:
        try:
            get_config(m)
        except KeyError as e:
            raise UserError(e.args[0]) from None
    stages = _list(opts.stages, "stages", STAGES)
    if "full" not in stages:
        stages.insert(0, "full")
    targets = known_targets()
    try:
        policy = TimingPolicy(warmup=opts.warmup, min_iters=opts.iters, min_time=opts.min_time,
                              max_iters=max(opts.max_iters, opts.iters), max_time=opts.max_time, rel_tol=opts.rel_tol)
        cfg = BenchConfig(
            models=models, targets=_list(opts.targets or ",".join(targets), "targets", targets),
            precisions=_list(opts.precisions, "precisions"), batches=_ints(opts.batch, "batch"),
            stages=stages, threads=opts.threads, policy=policy, eval_limit=opts.eval_limit, out=Path(opts.out),
            cache=Path(opts.cache) if opts.cache else None, checkpoint=opts.checkpoint, random_init=opts.random_init,
            calib_size=opts.calib_size, export_eval_size=opts.export_eval_size, onnx_int8_mode=opts.onnx_int8_mode,
            export_options=_export_options(opts.export_option, targets), device=opts.device,
            data_root=Path(opts.data_root) if opts.data_root else None, budget_s=opts.budget_s, dry_run=opts.dry_run,
            cpu_mhz=opts.cpu_mhz, command=opts.command_line(), export_only=opts.export_only,
            measured_floor=not opts.no_measured_floor,
            log=(lambda m: None) if opts.quiet else (lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True)))
    except ValueError as e:
        raise UserError(str(e)) from None
    data = run_bench(cfg)
    if opts.dry_run:
        from farl_edge.bench.report import plan_markdown

        print(plan_markdown(data))
        print(f"plan: {Path(opts.out) / 'plan.md'} (+ plan.json); nothing exported or measured")
        return 0
    if opts.export_only:
        print(f"artifacts cached in {cfg.cache}")
        return 0
    from farl_edge.bench.report import markdown

    print(markdown(data))
    print(f"report: {Path(opts.out) / 'bench.md'} (+ bench.csv, bench.json, latency.png, pareto-*.png)")
    failed = [r for r in data["rows"] if r["status"] == "failed"]
    return 1 if failed else 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark a model across targets and precisions (latency, memory, accuracy, floor)",
        description="Export what is missing, then measure every available target × precision × batch: latency "
                    "(median/p90/p99), throughput, cold start, peak RSS, size, the task metric and its change "
                    "against PyTorch fp32, and the distance to this CPU's compute floor. Writes bench.md, "
                    "bench.csv, bench.json and PNG plots to --out. Targets and their precisions come from the "
                    "export formats table (`farl-edge formats`).")
    BenchOptions.add_arguments(p)
    p.set_defaults(func=cmd_bench)
