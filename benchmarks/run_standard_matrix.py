#!/usr/bin/env python
"""The standard benchmark matrix of farl-edge, one `farl-edge bench` run per model.

Models:
- ``farl-b16-celebm-448`` (parsing) and ``farl-b16-300w-448`` (alignment), each beside its
  ``-edge`` variant (light head, issue 9): the full FaRL-B/16 at 448 px with **random weights** (FaRL's fine-tuned weights are not redistributed with the
  package): latency, memory, floor and parity (cosine, Δ against PyTorch fp32) are real, the task
  metric itself is not;
- ``farl-small-300w``, ``farl-small-celebm`` and their ``-edge`` variants, with the trained weights
  shipped in ``farl_edge/data/weights/`` — only those whose weights are there (the others are
  listed as skipped in the index).

Results go to ``benchmarks/results/<machine-class>/<model>/`` (bench.md, bench.csv, bench.json,
latency.png, pareto-<model>.png, command.txt) plus ``benchmarks/results/<machine-class>/README.md``,
an index with the batch-1 whole-model rows of every model. Exported artifacts and random weights
are cached outside the repository (``--cache``, default ``~/.cache/farl-edge-bench``).

Usage::

    python benchmarks/run_standard_matrix.py                 # everything (about 2-3 h on 2 cores)
    python benchmarks/run_standard_matrix.py --only small    # the small trained models
    python benchmarks/run_standard_matrix.py --only farl-b16-celebm-448 --batch 1,4

Run it on an otherwise idle machine: the numbers are only as quiet as the host.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

B16 = ["farl-b16-celebm-448", "farl-b16-celebm-448-edge", "farl-b16-300w-448", "farl-b16-300w-448-edge"]
SMALL = ["farl-small-300w", "farl-small-celebm", "farl-small-300w-edge", "farl-small-celebm-edge"]
# Per-group settings: 448 px B/16 rows are seconds per call on 2 cores, so fewer iterations and
# faces; the small models get the whole evaluation split (300-W test-helen: 330, CelebAMask-HQ val: 100).
SETTINGS = {
    "b16": {"batch": "1,4", "iters": "5", "min-time": "0", "warmup": "1", "max-time": "120", "eval-limit": "16",
            "calib-size": "32"},
    "small": {"batch": "1,8", "iters": "20", "min-time": "3", "warmup": "3", "max-time": "60", "eval-limit": "330",
              "calib-size": "64"},
}
TARGETS = "torch,onnx,openvino,tensorrt,tensorrt-rtx,coreml"
PRECISIONS = "fp32,bf16,int8"


def has_weights(name: str) -> bool:
    from farl_edge.registry import get_config, weights_path

    return weights_path(get_config(name)) is not None


def machine_class(threads: int | None) -> str:
    from farl_edge.bench.hardware import detect_cpu

    return detect_cpu().machine_class(threads)


def run_model(name: str, group: str, out: Path, cache: Path, args) -> dict:
    s = dict(SETTINGS[group])
    if args.batch:
        s["batch"] = args.batch
    if args.eval_limit is not None:
        s["eval-limit"] = str(args.eval_limit)
    cmd = ["farl-edge", "bench", "--model", name, "--targets", args.targets, "--precisions", args.precisions,
           "--out", str(out), "--cache", str(cache)]
    for k, v in s.items():
        cmd += [f"--{k}", v]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if group == "b16":
        cmd += ["--random-init"]
    if args.export_only:
        cmd += ["--export-only"]
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, stdout=subprocess.DEVNULL if args.quiet else None)
    return {"model": name, "rc": rc, "seconds": round(time.time() - t0), "command": " ".join(shlex.quote(c) for c in cmd)}


def _fmt(v, spec):
    return "–" if v is None else spec.format(v)


def write_index(folder: Path, runs: list[dict], skipped: list[str]) -> None:
    lines = [f"# Standard benchmark matrix — {folder.name}", "",
             "Produced by `python benchmarks/run_standard_matrix.py` (commands below and in each model folder's "
             "`command.txt`). Batch-1 whole-model rows; every model folder has the full report (batch N, "
             "backbone / head stages, cold start, memory, the CPU and library versions).", ""]
    env_done = False
    for run in runs:
        path = folder / run["model"] / "bench.json"
        if not path.is_file():
            lines += [f"## {run['model']}: no report (exit {run['rc']})", ""]
            continue
        data = json.loads(path.read_text())
        if not env_done:
            env = data["environment"]
            lines += [f"CPU: {env['cpu']['model']}, {env['cpu']['physical_cores']} cores, {env['cpu']['mhz']:.0f} MHz "
                      f"({env['cpu']['mhz_source']}); ISA {' '.join(env['cpu']['flags'])}; threads {env['threads']}.",
                      ""]
            env_done = True
        m = data["models"][run["model"]]
        b0 = data["settings"]["batches"][0]
        lines += [f"## {run['model']} ({m['task']}, {m['input_size']} px, {m['gmacs']['total']:.1f} GMACs; "
                  f"weights: {m['weights']})", "",
                  f"`{run['command']}` — {run['seconds']} s", "",
                  f"| target | precision | size MB | {m['metric']} | Δ | cosine | ms median | p99 | FPS | × torch | "
                  f"floor ms | % of floor | peak RSS MB | notes |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in data["rows"]:
            if r["stage"] != "full" or r["batch"] != b0:
                continue
            if r["status"] != "ok":
                lines.append(f"| {r['target']} | {r['precision']} | – | – | – | – | – | – | – | – | – | – | – | "
                             f"{r['status']}: {r['reason']} |")
                continue
            cos = (r.get("cosine") or {}).get("mean")
            lines.append(
                f"| {r['target']} | {r['precision']} | {_fmt(r.get('size_mb'), '{:.1f}')} | "
                f"{_fmt(r.get('metric'), '{:.3f}')} | {_fmt(r.get('delta'), '{:+.3f}')} | {_fmt(cos, '{:.6f}')} | "
                f"{r['median_ms']:.1f} | {r['p99_ms']:.1f} | {r['fps']:.2f} | {_fmt(r.get('x_torch'), '{:.2f}')} | "
                f"{r['floor_ms']:.1f} | {r['pct_of_floor']:.1f} | {r['peak_rss_mb']:.0f} | "
                f"{'; '.join(r.get('notes') or [])} |")
        lines.append("")
    if skipped:
        lines += ["## Skipped", ""] + [f"- {s}" for s in skipped] + [""]
    (folder / "README.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated model names, or 'b16' / 'small'")
    p.add_argument("--batch", help="override the batch sizes of every model")
    p.add_argument("--eval-limit", type=int, help="override the evaluation faces of every model")
    p.add_argument("--threads", type=int)
    p.add_argument("--targets", default=TARGETS)
    p.add_argument("--precisions", default=PRECISIONS)
    p.add_argument("--results", default=str(RESULTS), help="results root (default benchmarks/results)")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "farl-edge-bench"))
    p.add_argument("--export-only", action="store_true", help="fill the artifact cache only (no timing, no report)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    wanted = [("b16", m) for m in B16] + [("small", m) for m in SMALL]
    if args.only:
        keys = [k.strip() for k in args.only.split(",")]
        wanted = [(g, m) for g, m in wanted if g in keys or m in keys]
    folder = Path(args.results) / machine_class(args.threads)
    runs, skipped = [], []
    for group, name in wanted:
        if group == "small" and not has_weights(name):
            skipped.append(f"{name}: no trained weights in farl_edge/data/weights/")
            print(f"skip {name}: no shipped weights", flush=True)
            continue
        runs.append(run_model(name, group, folder / name, Path(args.cache), args))
    if args.export_only:
        return max([r["rc"] for r in runs] + [0])
    # keep the index complete across partial runs: merge with models already reported
    previous = folder / "runs.json"
    known = {r["model"]: r for r in (json.loads(previous.read_text()) if previous.is_file() else [])}
    known.update({r["model"]: r for r in runs})
    ordered = [known[m] for _, m in [("b16", m) for m in B16] + [("small", m) for m in SMALL] if m in known]
    folder.mkdir(parents=True, exist_ok=True)
    previous.write_text(json.dumps(ordered, indent=1) + "\n")
    write_index(folder, ordered, skipped)
    print(f"index: {folder / 'README.md'}")
    return max([r["rc"] for r in runs] + [0])


if __name__ == "__main__":
    sys.exit(main())
