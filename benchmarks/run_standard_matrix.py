#!/usr/bin/env python
"""The standard benchmark matrix of farl-edge, one `farl-edge bench` run per model.

Models:
- ``farl-b16-celebm-448`` (parsing) and ``farl-b16-300w-448`` (alignment), each beside its
  ``-edge`` variant (light head): the full FaRL-B/16 at 448 px with **random weights** (FaRL's fine-tuned
  weights are not redistributed with the package): latency, memory, floor and parity (cosine, Δ against
  PyTorch fp32) are real, the task metric itself is not;
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
    python benchmarks/run_standard_matrix.py --index-only    # README.md + summary.json from the folders

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

from farl_edge.bench.report import portable_text

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
TARGETS = "torch,torch-compile,onnx,openvino,executorch,litert,tensorrt,tensorrt-rtx,coreml"
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
    command = portable_text(" ".join(shlex.quote(c) for c in cmd))  # no folder of this machine in runs.json
    return {"model": name, "rc": rc, "seconds": round(time.time() - t0), "command": command}


def from_folder(path: Path) -> dict:
    """The run record of a model folder written by an earlier run (its command.txt and bench.json)."""
    data = json.loads((path / "bench.json").read_text())
    command = (path / "command.txt").read_text().strip() if (path / "command.txt").is_file() else data["command"]
    return {"model": path.name, "rc": 0, "seconds": round(data.get("seconds") or 0), "command": command}


def _fmt(v, spec):
    return "–" if v is None else spec.format(v)


# The speed targets of the benchmark: best exported row ≥ 30× PyTorch eager fp32 (≤ 2× the
# int8 floor) within these accuracy limits; INT8 ≥ 1.5× bf16 on the backbone.
TARGET_X_TORCH = 30.0
DELTA_LIMIT = {"parsing": 0.5, "alignment": 0.1}  # |Δf1_mean|, |Δnme_io| (trained weights)
MIN_COSINE = 0.999  # random weights: the task metric means nothing, parity is the output cosine
INT8_OVER_BF16 = 1.5


def _rows(data, stage="full", batch=None):
    b = data["settings"]["batches"][0] if batch is None else batch
    return [r for r in data["rows"] if r["stage"] == stage and r["batch"] == b and r["status"] in ("ok", "derived")]


def _within_accuracy(row, model: dict) -> bool:
    if model["weights"].startswith("random") or row.get("delta") is None:
        return ((row.get("cosine") or {}).get("mean") or 0.0) >= MIN_COSINE
    return abs(row["delta"]) <= DELTA_LIMIT[model["task"]]


def summarize(name: str, data: dict) -> dict:
    """Best batch-1 row within the accuracy limits, × torch, gap to the int8 floor, where the time
    goes (backbone / head of that target), and INT8 vs bf16 on the backbone."""
    model = data["models"][name]
    full = [r for r in _rows(data) if r["target"] != "torch" or r["precision"] != "fp32"]
    ok = [r for r in full if _within_accuracy(r, model)]
    best = min(ok, key=lambda r: r["median_ms"]) if ok else None
    torch_fp32 = next((r for r in _rows(data) if r["target"] == "torch" and r["precision"] == "fp32"), None)
    gmacs = model["gmacs"]["total"]
    out = {"model": name, "task": model["task"], "gmacs": gmacs, "weights": model["weights"],
           "torch_fp32_ms": torch_fp32["median_ms"] if torch_fp32 else None, "best": None}
    if best:
        peak = data["environment"].get("peak", {}).get("int8", {}).get("gmacs_per_s")
        int8_floor = gmacs / peak * 1000 if peak else None
        stages = {st: next((r["median_ms"] for r in _rows(data, st) if r["target"] == best["target"]
                            and r["precision"] == best["precision"]), None) for st in ("backbone", "head")}
        out["best"] = {"target": best["target"], "precision": best["precision"], "median_ms": best["median_ms"],
                       "x_torch": best.get("x_torch"), "delta": best.get("delta"),
                       "cosine": (best.get("cosine") or {}).get("mean"), "int8_floor_ms": int8_floor,
                       "x_int8_floor": best["median_ms"] / int8_floor if int8_floor else None, **{
                           f"{k}_ms": v for k, v in stages.items()}}
    backbone = _rows(data, "backbone")
    int8 = [r["median_ms"] for r in backbone if r["precision"] == "int8"]
    bf16 = [r["median_ms"] for r in backbone if r["precision"] == "bf16"]
    out["backbone_int8_over_bf16"] = (min(bf16) / min(int8)) if int8 and bf16 else None
    return out


def targets_section(summaries: list[dict]) -> list[str]:
    lines = ["## Targets", "",
             f"Best batch-1 row within the accuracy limits (trained weights: |Δf1_mean| ≤ {DELTA_LIMIT['parsing']}, "
             f"|Δnme_io| ≤ {DELTA_LIMIT['alignment']}; random weights: output cosine ≥ {MIN_COSINE}). Targets: "
             f"≥ {TARGET_X_TORCH:.0f}× PyTorch eager fp32 of the same run, INT8 ≥ {INT8_OVER_BF16}× bf16 on the "
             "backbone. Backbone / head: the best row's target and precision, per stage.", "",
             "| model | GMACs | torch fp32 ms | best | ms | × torch | ≥ 30× | int8 floor ms | × floor | "
             "backbone ms | head ms | backbone int8 / bf16 speed-up | ≥ 1.5× |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summaries:
        b = s["best"] or {}
        ratio = s["backbone_int8_over_bf16"]
        lines.append(
            f"| {s['model']} | {s['gmacs']:.1f} | {_fmt(s['torch_fp32_ms'], '{:.1f}')} | "
            f"{b.get('target', '–')} {b.get('precision', '')} | {_fmt(b.get('median_ms'), '{:.1f}')} | "
            f"{_fmt(b.get('x_torch'), '{:.1f}')} | "
            f"{'–' if b.get('x_torch') is None else ('yes' if b['x_torch'] >= TARGET_X_TORCH else 'no')} | "
            f"{_fmt(b.get('int8_floor_ms'), '{:.1f}')} | {_fmt(b.get('x_int8_floor'), '{:.1f}')} | "
            f"{_fmt(b.get('backbone_ms'), '{:.1f}')} | {_fmt(b.get('head_ms'), '{:.1f}')} | "
            f"{_fmt(ratio, '{:.2f}')} | {'–' if ratio is None else ('yes' if ratio >= INT8_OVER_BF16 else 'no')} |")
    return lines + [""]


def write_index(folder: Path, runs: list[dict], skipped: list[str]) -> None:
    lines = [f"# Standard benchmark matrix — {folder.name}", "",
             "Produced by `python benchmarks/run_standard_matrix.py` (commands below and in each model folder's "
             "`command.txt`). Batch-1 whole-model rows; every model folder has the full report (batch N, "
             "backbone / head stages, cold start, memory, the CPU and library versions).", ""]
    summaries = []
    for run in runs:
        path = folder / run["model"] / "bench.json"
        if path.is_file():
            summaries.append(summarize(run["model"], json.loads(path.read_text())))
    if summaries:
        lines += targets_section(summaries)
        (folder / "summary.json").write_text(json.dumps(summaries, indent=1) + "\n")
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
    p.add_argument("--index-only", action="store_true",
                   help="rebuild README.md / summary.json from the model folders already measured (no runs)")
    args = p.parse_args(argv)

    wanted = [("b16", m) for m in B16] + [("small", m) for m in SMALL]
    if args.only:
        keys = [k.strip() for k in args.only.split(",")]
        wanted = [(g, m) for g, m in wanted if g in keys or m in keys]
    folder = Path(args.results) / machine_class(args.threads)
    if args.index_only:
        found = [from_folder(folder / m) for _, m in wanted if (folder / m / "bench.json").is_file()]
        if not found:
            print(f"no measured model folders under {folder}", file=sys.stderr)
            return 2
        write_index(folder, found, [])
        (folder / "runs.json").write_text(json.dumps(found, indent=1) + "\n")
        print(f"index: {folder / 'README.md'} ({len(found)} models)")
        return 0
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
