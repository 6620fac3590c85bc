"""``farl-edge bench``: registered by farl_edge.cli (``register(subparsers)``).

``--preset gpu`` and ``--preset mac`` are the one command for a machine with an NVIDIA GPU
(PyTorch CUDA fp32/fp16/bf16, TensorRT fp16/int8) and for a Mac (Core ML); ``--preset cpu`` is
the default. A preset only changes option defaults (:data:`PRESETS`): every flag given on the
command line wins. ``--dry-run`` prints and writes the plan without exporting or measuring.

Exit status: 0 every planned row measured (unavailable targets and rows skipped by the time
budget are listed, not errors); 1 some row failed (the report is still written and names it);
2 user error.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

# The models of the GPU / Mac runs: the small trained alignment model and FaRL-B/16 at 448 px for
# both tasks (random weights there: speed and parity are real, task accuracy is not).
DEVICE_MODELS = "farl-small-300w,farl-b16-lapa-448,farl-b16-300w-448"
# Option defaults (argparse dest → value); None for targets means every target of the formats table.
DEFAULTS = {"model": None, "targets": None, "precisions": "fp32,bf16,int8", "batch": "1,8", "iters": 10,
            "min_time": 2.0, "max_time": 60.0, "max_iters": 1000, "warmup": 2, "rel_tol": 0.02, "eval_limit": 32,
            "stages": "full,backbone,head", "calib_size": 32, "export_eval_size": 4, "onnx_int8_mode": "dynamic",
            "device": "cpu", "budget_s": None}
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


def resolve_options(args) -> None:
    """Fill the options not given on the command line from the preset, then the defaults."""
    preset = PRESETS[args.preset or "cpu"]
    for name, default in DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, preset.get(name, default))
    if args.no_stages:
        args.stages = "full"


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
    from farl_edge.bench.runner import STAGES, BenchConfig, known_targets, run_bench
    from farl_edge.bench.timing import TimingPolicy
    from farl_edge.cli import UserError
    from farl_edge.registry import get_config

    resolve_options(args)
    if not args.model:
        raise UserError("--model is required (or a --preset that names the models: gpu, mac)")
    models = _list(args.model, "model")
    for m in models:
        try:
            get_config(m)
        except KeyError as e:
            raise UserError(e.args[0]) from None
    stages = _list(args.stages, "stages", STAGES)
    if "full" not in stages:
        stages.insert(0, "full")
    targets = known_targets()
    try:
        policy = TimingPolicy(warmup=args.warmup, min_iters=args.iters, min_time=args.min_time,
                              max_iters=max(args.max_iters, args.iters), max_time=args.max_time, rel_tol=args.rel_tol)
        cfg = BenchConfig(
            models=models, targets=_list(args.targets or ",".join(targets), "targets", targets),
            precisions=_list(args.precisions, "precisions"), batches=_ints(args.batch, "batch"),
            stages=stages, threads=args.threads, policy=policy, eval_limit=args.eval_limit, out=Path(args.out),
            cache=Path(args.cache) if args.cache else None, checkpoint=args.checkpoint, random_init=args.random_init,
            calib_size=args.calib_size, export_eval_size=args.export_eval_size, onnx_int8_mode=args.onnx_int8_mode,
            export_options=_export_options(args.export_option, targets), device=args.device,
            data_root=Path(args.data_root) if args.data_root else None, budget_s=args.budget_s, dry_run=args.dry_run,
            cpu_mhz=args.cpu_mhz, command=command_line(args), export_only=args.export_only,
            log=(lambda m: None) if args.quiet else (lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True)))
    except ValueError as e:
        raise UserError(str(e)) from None
    data = run_bench(cfg)
    if args.dry_run:
        from farl_edge.bench.report import plan_markdown

        print(plan_markdown(data))
        print(f"plan: {Path(args.out) / 'plan.md'} (+ plan.json); nothing exported or measured")
        return 0
    if args.export_only:
        print(f"artifacts cached in {cfg.cache}")
        return 0
    from farl_edge.bench.report import markdown

    print(markdown(data))
    print(f"report: {Path(args.out) / 'bench.md'} (+ bench.csv, bench.json, latency.png, pareto-*.png)")
    failed = [r for r in data["rows"] if r["status"] == "failed"]
    return 1 if failed else 0


def register(subparsers) -> None:
    from farl_edge.bench.runner import DEVICES

    d = DEFAULTS
    p = subparsers.add_parser(
        "bench", help="benchmark a model across targets and precisions (latency, memory, accuracy, floor)",
        description="Export what is missing, then measure every available target × precision × batch: latency "
                    "(median/p90/p99), throughput, cold start, peak RSS, size, the task metric and its change "
                    "against PyTorch fp32, and the distance to this CPU's compute floor. Writes bench.md, "
                    "bench.csv, bench.json and PNG plots to --out. Targets and their precisions come from the "
                    "export formats table (`farl-edge formats`).")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="option defaults for a machine: cpu (the default), gpu (NVIDIA GPU: PyTorch CUDA "
                        "fp32/fp16/bf16 + TensorRT fp16/int8, models " + DEVICE_MODELS + "), mac (Core ML "
                        "fp32/fp16/int8, same models); flags given here win")
    p.add_argument("--model", help="registry name(s), comma-separated (default: the preset's)")
    p.add_argument("--targets", help="comma-separated (default: torch and every export format; the ones that "
                                     "cannot run here are listed with the reason)")
    p.add_argument("--precisions", help=f"comma-separated among fp32,bf16,fp16,int8; TARGET:PRECISION for one "
                                        f"target only, e.g. torch:fp16,tensorrt:int8 (default {d['precisions']})")
    p.add_argument("--batch", help=f"batch sizes, comma-separated (default {d['batch']})")
    p.add_argument("--device", choices=DEVICES, help="where the PyTorch rows run (default cpu; gpu preset: cuda)")
    p.add_argument("--threads", type=int, help="threads per row (default: all CPUs)")
    p.add_argument("--iters", type=int, help=f"minimum timed iterations (default {d['iters']})")
    p.add_argument("--min-time", type=float, help=f"minimum timed seconds per row (default {d['min_time']})")
    p.add_argument("--max-time", type=float, help=f"maximum timed seconds per row (default {d['max_time']})")
    p.add_argument("--max-iters", type=int, help=f"maximum timed iterations (default {d['max_iters']})")
    p.add_argument("--warmup", type=int, help=f"warm-up calls (default {d['warmup']})")
    p.add_argument("--rel-tol", type=float, help=f"median stability tolerance (default {d['rel_tol']})")
    p.add_argument("--eval-limit", type=int,
                   help=f"evaluation faces for the accuracy columns (0: none; default {d['eval_limit']})")
    p.add_argument("--stages", help=f"stages to time (full always; default {d['stages']})")
    p.add_argument("--no-stages", action="store_true", help="whole model only")
    p.add_argument("--out", default="bench-results", help="report folder (artifacts cached in OUT/cache)")
    p.add_argument("--cache", help="artifact / weight cache folder (default OUT/cache)")
    p.add_argument("--data-root", help="evaluation / calibration faces, laid out like ../shared/data "
                                       "(300w/test-helen, 300w/train, celebamask-hq/val, celebamask-hq/train); "
                                       "default $FARL_EDGE_DATA, else ../shared/data")
    p.add_argument("--checkpoint", help="weights for the (single) model")
    p.add_argument("--random-init", action="store_true", help="seeded random weights even when weights are shipped")
    p.add_argument("--calib-size", type=int, help=f"INT8 calibration faces (default {d['calib_size']})")
    p.add_argument("--export-eval-size", type=int,
                   help=f"faces for each export's own parity validation (default {d['export_eval_size']})")
    p.add_argument("--int8-mode", "--onnx-int8-mode", dest="onnx_int8_mode", choices=["dynamic", "static"],
                   help="INT8 flavour where a format offers a choice (ONNX Runtime; default dynamic: the fastest "
                        "measured); the other formats use their own")
    p.add_argument("--export-option", action="append", metavar="TARGET:KEY=VALUE",
                   help="builder option of a target (its Format.options, e.g. tensorrt:builder_optimization_level=5"
                        "); repeatable")
    p.add_argument("--budget-s", type=float,
                   help="stop starting rows after this many seconds; the rest are listed as skipped")
    p.add_argument("--cpu-mhz", type=float, help="clock for the floor (default: lscpu max MHz / /proc/cpuinfo)")
    p.add_argument("--export-only", action="store_true",
                   help="only fill the artifact cache (exports need no quiet machine; timing does)")
    p.add_argument("--dry-run", action="store_true",
                   help="print and write the plan (rows, availability, artifacts to export, data found); "
                        "export and measure nothing")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench)


OPTIONS = ("preset", "model", "targets", "precisions", "batch", "device", "threads", "iters", "min_time", "max_time",
           "max_iters", "warmup", "rel_tol", "eval_limit", "stages", "out", "cache", "data_root", "checkpoint",
           "calib_size", "export_eval_size", "onnx_int8_mode", "budget_s", "cpu_mhz")


def command_line(args) -> str:
    """The effective command (every option spelled out), for command.txt and the report."""
    parts = ["farl-edge", "bench"]
    for name in OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    for item in getattr(args, "export_option", None) or []:
        parts += ["--export-option", item]
    for flag in ("no_stages", "random_init", "dry_run"):
        if getattr(args, flag, False):
            parts.append(f"--{flag.replace('_', '-')}")
    return " ".join(shlex.quote(p) for p in parts)
