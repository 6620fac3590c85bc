#!/usr/bin/env python
"""Where does the bench's torch-compile row spend its time? torch.profiler over the compiled model.

Builds the model exactly as the bench's ``torch-compile`` target does (``farl_edge.bench.worker``:
inductor with frozen weights; bf16 under autocast; int8 by PT2E with the x86 inductor quantiser,
calibrated on the calibration faces), runs ``--iters`` batch-1 calls under ``torch.profiler`` and
sums self CPU time per kernel, grouped into kinds: int8 GEMM / conv (oneDNN ``qlinear`` /
``qconv``), float GEMM / conv (oneDNN / MKL ``linear`` / ``convolution`` / ``mm``), attention
matmuls (``bmm``), inductor's generated C++ kernels (``cpp_fused_*``: quantise / dequantise,
LayerNorm, softmax, GELU and the other elementwise work, fused) and everything else. It answers
"int8 is no faster than bf16 here: whose time is it?" with the profile, not a guess.

Usage::

    python benchmarks/torch_compile_profile.py --model farl-small-300w --precisions int8,bf16 \\
        --iters 50 --md benchmarks/results/<class>/torch-compile-profile-small-300w.md
"""
from __future__ import annotations

import argparse
import collections
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

KINDS = (  # (kind, substrings of the profiler's event name), first match wins
    ("int8 gemm/conv (oneDNN)", ("qlinear", "qconv", "int8", "quantized::")),
    ("float gemm/conv (oneDNN/MKL)", ("_linear_pointwise", "mkl_linear", "convolution", "mkldnn", "addmm", "aten::mm",
                                      "onednn::")),  # after the int8 kinds: onednn::q* matched there
    ("graph call (Python wrapper, allocations)", ("compiledfxgraph", "compiled region", "dynamo")),
    ("attention matmul", ("bmm", "baddbmm", "matmul", "scaled_dot_product")),
    ("inductor fused kernels (quantise, norm, softmax, GELU, ...)", ("cpp_fused", "kernel_cpp")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def profile_row(model: str, precision: str, threads: int, iters: int, calib: str | None) -> dict:
    import torch
    import torch._inductor.config as inductor_config
    from torch.profiler import ProfilerActivity, profile

    from farl_edge.bench.worker import _open_torch_compile

    # name inductor's generated C++ kernels in the profile (else their time is the graph call's own)
    inductor_config.cpp.enable_kernel_profile = True

    spec = {"model": model, "checkpoint": None, "pretrained": True, "target": "torch-compile",
            "precision": precision, "threads": threads, "calibration": {"data": calib, "size": 32}}
    t0 = time.perf_counter()
    predictor, make_fn = _open_torch_compile(spec)
    build_s = time.perf_counter() - t0
    s = predictor.config.crop_size
    fn = make_fn(np.random.default_rng(0).random((1, 3, s, s), dtype=np.float32))
    for _ in range(5):
        fn()
    walls = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            walls.append((time.perf_counter() - t) * 1e3)
    by_kind, by_name = collections.Counter(), collections.Counter()
    for ev in prof.key_averages():
        ms = ev.self_cpu_time_total / 1e3 / iters  # µs over all calls → ms per model call
        if ms <= 0:
            continue
        by_kind[kind_of(ev.key)] += ms
        by_name[ev.key] += ms
    return {"model": model, "precision": precision, "threads": threads, "iters": iters, "build_s": build_s,
            "wall_ms_median": float(np.median(walls)), "profiled_ms": sum(by_kind.values()),
            "by_kind": dict(by_kind.most_common()), "top": dict(by_name.most_common(15)),
            "torch": torch.__version__}


def markdown(results: list[dict], command: str) -> str:
    lines = ["# torch-compile profile (torch.profiler, self CPU time per model call)", "",
             f"Command: `{command}` ({time.strftime('%Y-%m-%d')}); every number below is this command's output.", ""]
    kinds = [k for k, _ in KINDS] + ["other"]
    head = " | ".join(f"{r['model']} {r['precision']} ms" for r in results)
    lines += [f"| kind | {head} |", "| --- |" + " --- |" * len(results)]
    for k in kinds:
        lines.append(f"| {k} | " + " | ".join(f"{r['by_kind'].get(k, 0.0):.2f}" for r in results) + " |")
    lines.append("| **profiled total** | " + " | ".join(f"{r['profiled_ms']:.2f}" for r in results) + " |")
    lines.append("| wall median (profiler on) | " + " | ".join(f"{r['wall_ms_median']:.2f}" for r in results) + " |")
    for r in results:
        lines += ["", f"### {r['model']} {r['precision']}: top kernels", "", "| kernel | ms |", "| --- | --- |"]
        lines += [f"| `{name[:90]}` | {ms:.3f} |" for name, ms in r["top"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--precisions", default="int8,bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--calib", help="calibration faces (default: the task's shared calibration set)")
    p.add_argument("--json")
    p.add_argument("--md")
    args = p.parse_args(argv)
    results = []
    for precision in args.precisions.split(","):
        if precision not in ("fp32", "bf16", "int8"):
            p.error(f"--precisions takes fp32, bf16, int8, not {precision!r}")
        print(f"{args.model} {precision}: compiling ...", flush=True)
        r = profile_row(args.model, precision, args.threads, args.iters, args.calib)
        print(f"  wall {r['wall_ms_median']:.2f} ms; " + ", ".join(f"{k} {v:.2f}" for k, v in r["by_kind"].items()))
        results.append(r)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    from farl_edge.fileio import atomic_write

    if args.json:
        atomic_write(Path(args.json), json.dumps({"command": command, "results": results}, indent=1))
    if args.md:
        atomic_write(Path(args.md), markdown(results, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
