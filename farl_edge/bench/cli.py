"""``farl-edge bench``: registered by farl_edge.cli (``register(subparsers)``).

Exit status: 0 every planned row measured (unavailable targets are listed, not errors); 1 some row
failed (the report is still written and names it); 2 user error.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path


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
    from farl_edge.bench.runner import ALL_PRECISIONS, ALL_TARGETS, STAGES, BenchConfig, run_bench
    from farl_edge.bench.timing import TimingPolicy
    from farl_edge.cli import UserError
    from farl_edge.registry import get_config

    models = _list(args.model, "model")
    for m in models:
        try:
            get_config(m)
        except KeyError as e:
            raise UserError(e.args[0]) from None
    stages = ["full"] if args.no_stages else _list(args.stages, "stages", STAGES)
    if "full" not in stages:
        stages.insert(0, "full")
    try:
        policy = TimingPolicy(warmup=args.warmup, min_iters=args.iters, min_time=args.min_time,
                              max_iters=max(args.max_iters, args.iters), max_time=args.max_time, rel_tol=args.rel_tol)
        cfg = BenchConfig(
            models=models, targets=_list(args.targets, "targets", ALL_TARGETS),
            precisions=_list(args.precisions, "precisions", ALL_PRECISIONS), batches=_ints(args.batch, "batch"),
            stages=stages, threads=args.threads, policy=policy, eval_limit=args.eval_limit, out=Path(args.out),
            cache=Path(args.cache) if args.cache else None, checkpoint=args.checkpoint, random_init=args.random_init,
            calib_size=args.calib_size, export_eval_size=args.export_eval_size, onnx_int8_mode=args.onnx_int8_mode,
            cpu_mhz=args.cpu_mhz, command=command_line(args), export_only=args.export_only,
            log=(lambda m: None) if args.quiet else (lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True)))
    except ValueError as e:
        raise UserError(str(e)) from None
    data = run_bench(cfg)
    if args.export_only:
        print(f"artifacts cached in {cfg.cache}")
        return 0
    from farl_edge.bench.report import markdown

    print(markdown(data))
    print(f"report: {Path(args.out) / 'bench.md'} (+ bench.csv, bench.json, latency.png, pareto-*.png)")
    failed = [r for r in data["rows"] if r["status"] == "failed"]
    return 1 if failed else 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark a model across targets and precisions (latency, memory, accuracy, floor)",
        description="Export what is missing, then measure every available target × precision × batch: latency "
                    "(median/p90/p99), throughput, cold start, peak RSS, size, the task metric and its change "
                    "against PyTorch fp32, and the distance to this CPU's compute floor. Writes bench.md, "
                    "bench.csv, bench.json and PNG plots to --out.")
    p.add_argument("--model", required=True, help="registry name(s), comma-separated")
    p.add_argument("--targets", default="torch,onnx,openvino,tensorrt,tensorrt-rtx,coreml",
                   help="comma-separated (default all; the ones that cannot run here are listed with the reason)")
    p.add_argument("--precisions", default="fp32,bf16,int8", help="comma-separated among fp32,bf16,fp16,int8")
    p.add_argument("--batch", default="1,8", help="batch sizes, comma-separated (default 1,8)")
    p.add_argument("--threads", type=int, help="threads per row (default: all CPUs)")
    p.add_argument("--iters", type=int, default=10, help="minimum timed iterations (default 10)")
    p.add_argument("--min-time", type=float, default=2.0, help="minimum timed seconds per row (default 2)")
    p.add_argument("--max-time", type=float, default=60.0, help="maximum timed seconds per row (default 60)")
    p.add_argument("--max-iters", type=int, default=1000, help="maximum timed iterations (default 1000)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up calls (default 2)")
    p.add_argument("--rel-tol", type=float, default=0.02, help="median stability tolerance (default 0.02)")
    p.add_argument("--eval-limit", type=int, default=32, help="evaluation faces for the accuracy columns (0: none)")
    p.add_argument("--stages", default="full,backbone,head", help="stages to time (full always)")
    p.add_argument("--no-stages", action="store_true", help="whole model only")
    p.add_argument("--out", default="bench-results", help="report folder (artifacts cached in OUT/cache)")
    p.add_argument("--cache", help="artifact / weight cache folder (default OUT/cache)")
    p.add_argument("--checkpoint", help="weights for the (single) model")
    p.add_argument("--random-init", action="store_true", help="seeded random weights even when weights are shipped")
    p.add_argument("--calib-size", type=int, default=32, help="INT8 calibration faces (default 32)")
    p.add_argument("--export-eval-size", type=int, default=4,
                   help="faces for each export's own parity validation (default 4)")
    p.add_argument("--onnx-int8-mode", choices=["dynamic", "static"], default="dynamic",
                   help="ONNX Runtime INT8 flavour (default dynamic: the fastest measured)")
    p.add_argument("--cpu-mhz", type=float, help="clock for the floor (default: lscpu max MHz / /proc/cpuinfo)")
    p.add_argument("--export-only", action="store_true",
                   help="only fill the artifact cache (exports need no quiet machine; timing does)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench)


OPTIONS = ("model", "targets", "precisions", "batch", "threads", "iters", "min_time", "max_time", "max_iters", "warmup",
           "rel_tol", "eval_limit", "stages", "out", "cache", "checkpoint", "calib_size", "export_eval_size",
           "onnx_int8_mode", "cpu_mhz")


def command_line(args) -> str:
    """The effective command (every option spelled out), for command.txt and the report."""
    parts = ["farl-edge", "bench"]
    for name in OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    for flag in ("no_stages", "random_init"):
        if getattr(args, flag, False):
            parts.append(f"--{flag.replace('_', '-')}")
    return " ".join(shlex.quote(p) for p in parts)
