"""Benchmark report: markdown (model-zoo style), CSV, JSON and PNG plots (matplotlib, Agg).

Files written to the output folder: ``bench.md``, ``bench.csv``, ``bench.json``,
``latency.png`` (median latency per target and precision, one panel per model and stage, one bar
per batch size) and ``pareto-<model>.png`` (task metric against batch-1 latency; the Pareto front
joined), plus ``command.txt`` (the exact command line).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path

from farl_edge.fileio import atomic_write

COLUMNS = [  # (key, header, format)
    ("model", "model", "{}"), ("target", "target", "{}"), ("precision", "precision", "{}"), ("stage", "stage", "{}"),
    ("batch", "batch", "{}"), ("size_mb", "size MB", "{:.1f}"), ("metric", "metric", "{:.3f}"),
    ("delta", "Δ vs torch fp32", "{:+.3f}"), ("cosine_mean", "cosine", "{:.6f}"),
    ("median_ms", "latency ms median", "{:.1f}"), ("p99_ms", "p99", "{:.1f}"), ("fps", "FPS", "{:.1f}"),
    ("x_torch", "× torch", "{:.2f}"), ("gmacs", "GMACs", "{:.1f}"), ("floor_ms", "floor ms", "{:.1f}"),
    ("pct_of_floor", "% of floor", "{:.1f}"), ("measured_floor_ms", "measured floor ms", "{:.2f}"),
    ("x_measured_floor", "× measured floor", "{:.2f}"), ("cold_start_ms", "cold start ms", "{:.0f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
]
CSV_COLUMNS = ["model", "target", "precision", "stage", "batch", "status", "reason", "size_mb", "metric_name", "metric",
               "delta", "cosine_mean", "cosine_min", "median_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "iters",
               "stable", "fps", "x_torch", "gmacs", "floor_ms", "x_floor", "pct_of_floor", "measured_floor_ms",
               "x_measured_floor", "cold_start_ms", "load_ms",
               "first_ms", "import_ms", "peak_rss_mb", "peak_gpu_mb", "rss_baseline_mb", "rss_after_load_mb",
               "export_s",
               "export_validation", "artifact", "notes"]


def flat(row: dict) -> dict:
    """A report row with the nested values (cosine) flattened into columns."""
    out = dict(row)
    cos = row.get("cosine") or {}
    out["cosine_mean"], out["cosine_min"] = cos.get("mean"), cos.get("min")
    out["notes"] = "; ".join(row.get("notes") or [])
    return out


def _fmt(value, spec: str) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "–"
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


def project_root() -> Path:
    """The source checkout this package runs from, or the current folder for an installed package."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def portable_text(text: str, root: str | Path | None = None, home: str | Path | None = None) -> str:
    """``text`` with this machine's absolute paths written as the project sees them: relative to the
    project root (``benchmarks/results/…``; ``../shared/data/…`` beside it) or under ``~`` (the bench
    cache in the home folder), so that committed results do not name the machine they ran on."""
    root = Path(root or project_root()).resolve()
    home = Path(home or os.path.expanduser("~"))
    prefixes = [(str(root), "")]
    if root.parent != Path(root.anchor) and root.parent != home:
        prefixes.append((str(root.parent), "../"))
    if home != Path(home.anchor):
        prefixes.append((str(home), "~/"))
    for prefix, rel in prefixes:  # the project root first: it is the longest
        pattern = r"(?<![\w./~-])" + re.escape(prefix) + r"(/|(?![\w./-]))"
        text = re.sub(pattern, lambda m, rel=rel: _relative(m, rel), text)
    return text


def _relative(m: re.Match, rel: str) -> str:
    followed = m.end() < len(m.string) and re.match(r"[\w.~-]", m.string[m.end()])
    if m.group(1) and followed:
        return rel  # a path below the prefix
    return rel.rstrip("/") or "."  # the prefix itself (with or without a trailing /)


def portable(obj, root: str | Path | None = None, home: str | Path | None = None):
    """:func:`portable_text` over every string (keys too) of a JSON-like object; returns a copy."""
    if isinstance(obj, str):
        return portable_text(obj, root, home)
    if isinstance(obj, dict):
        return {portable(k, root, home): portable(v, root, home) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v, root, home) for v in obj]
    if isinstance(obj, Path):
        return portable_text(str(obj), root, home)
    return obj


def markdown(data: dict) -> str:
    env = data["environment"]
    cpu = env["cpu"]
    s = data["settings"]
    lines = [f"# farl-edge bench — {env['machine_class']}", ""]
    lines += [f"- command: `{data.get('command') or '(python API)'}`",
              f"- date: {data['created']}; {data.get('seconds', 0):.0f} s",
              f"- CPU: {cpu['model']} ({cpu['vendor']}), {cpu['physical_cores']} cores / {cpu['logical_cpus']} "
              f"logical, {cpu['mhz']:.0f} MHz ({cpu['mhz_source']})",
              f"- ISA flags: {' '.join(cpu['flags'])}",
              *(["- GPU: " + "; ".join(f"{g['name']} ({g['compute_capability']}, driver {g['driver']})"
                                        for g in env["gpus"])] if env.get("gpus") else []),
              *([f"- PyTorch rows on: {s['device']}"] if s.get("device", "cpu") != "cpu" else []),
              f"- threads: {s['threads']} (cores in the floor: {env['cores_used']})",
              "- peak rates used for the floor: " + ", ".join(
                  f"{d} {p['macs_per_cycle_core']} MACs/cycle/core ({p['isa']}) = {p['gmacs_per_s']:.0f} GMAC/s"
                  for d, p in env["peak"].items()),
              "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
              f"- timing: {_policy(s['timing'])}; one fresh subprocess per row",
              f"- accuracy: {s['eval_limit']} evaluation faces per model (below), measured at batch "
              f"{s['batches'][0]} and shown for every batch of the same target/precision", ""]
    lines += ["| model | task | input | weights | GMACs total / backbone / head | params M | metric | eval data |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in data["models"].items():
        g = m["gmacs"]
        lines.append(f"| {name} | {m['task']} | {m['input_size']} | {m['weights']} | {g.get('total', 0):.2f} / "
                     f"{g.get('backbone', float('nan')):.2f} / {g.get('head', float('nan')):.2f} | {m['params_m']:.1f} | "
                     f"{m.get('metric') or '–'} | {m.get('eval_data') or '–'} |")
    lines.append("")
    for model in data["models"]:
        rows = [flat(r) for r in data["rows"] if r["model"] == model]
        for stage in ("full", "backbone", "head"):
            srows = [r for r in rows if r["stage"] == stage]
            if not srows:
                continue
            title = {"full": "whole model", "backbone": "backbone stage", "head": "head stage"}[stage]
            lines += [f"## {model} — {title}", ""]
            cols = [c for c in COLUMNS if c[0] not in ("model", "stage")]
            if stage != "full":
                cols = [c for c in cols if c[0] not in ("metric", "delta")]
            lines.append("| " + " | ".join(h for _, h, _ in cols) + " | notes |")
            lines.append("|" + " --- |" * (len(cols) + 1))
            for r in srows:
                if r["status"] in ("unavailable", "failed", "unreliable", "skipped"):
                    cells = [_fmt(r.get(k), f) if k in ("target", "precision", "batch") else "–" for k, _, f in cols]
                    note = f"**{r['status']}**: {r['reason']}"
                else:
                    cells = [_fmt(r.get(k), f) for k, _, f in cols]
                    note = r["notes"]
                lines.append("| " + " | ".join(cells) + f" | {note} |")
            lines.append("")
    if data.get("kernel_throughput"):
        lines += ["## Kernel throughput (this run, TMAC/s, MAC-weighted over the model's shapes)", "",
                  "| precision | gemm | attention | conv |", "| --- | --- | --- | --- |"]
        for prec, classes in data["kernel_throughput"].items():
            lines.append(f"| {prec} | " + " | ".join(f"{classes[c]:.3f}" if c in classes else "–"
                                                      for c in ("gemm", "attention", "conv")) + " |")
        lines.append("")
    unstarted = [m for m in dict.fromkeys(r["model"] for r in data["rows"]) if m not in data["models"]]
    if unstarted:
        lines += ["## Not started", ""]
        for m in unstarted:
            rows = [r for r in data["rows"] if r["model"] == m]
            lines.append(f"- {m}: {len(rows)} rows, {rows[0]['status']}: {rows[0]['reason']}")
        lines.append("")
    if data.get("not_measured"):
        lines += ["## Not measured (no such path)", ""]
        seen = set()
        for s_ in data["not_measured"]:
            key = (s_["target"], s_["precision"])
            if key not in seen:
                seen.add(key)
                lines.append(f"- {s_['target']} {s_['precision']}: {s_['reason']}")
        lines.append("")
    lines += ["## Columns", "",
              "- metric: f1_mean (%) for parsing, nme_io (%) for alignment, on the evaluation faces; Δ = row − "
              "PyTorch fp32 on the same faces (parsing: higher is better, alignment: lower is better).",
              "- cosine: mean over faces of the cosine between this row's main output (logits / heatmaps; "
              "embedding for the backbone stage) and PyTorch fp32's, same inputs.",
              "- latency: per call on real face crops (numpy in, numpy out), after warm-up; p99 from the "
              "measured iterations (few iterations: p99 ≈ max). FPS = batch × 1000 / median. GPU rows (PyTorch "
              "CUDA, TensorRT) include the host↔device copies; PyTorch CUDA fp32 runs with TF32 off.",
              "- × torch: PyTorch eager fp32 median / this median (same model, stage and batch).",
              "- floor: GMACs × batch / (peak MACs/cycle/core of the row's data type × cores × MHz); "
              "% of floor = 100 × floor / median (100 % = at the hardware limit). The floor is this CPU's: "
              "rows that run on a GPU or through Core ML have none.",
              "- measured floor: Σ over the model's GEMM / attention / conv shapes of calls × MACs ÷ the TMAC/s "
              "this CPU's kernels reach on that shape (OpenVINO graphs of 2–32 ops of the shape, each feeding "
              "the next; attention as the fused ScaledDotProductAttention; TMAC/s from the ops' own PERF_COUNT "
              "time, so quantising, reorders and call cost are left to the model; an int8 row takes the faster "
              "of each shape's int8 and bf16 kernels; timed in this run after the rows); × measured floor = "
              "median / measured floor (1.0 = every matrix op at its kernel's speed and nothing else costs "
              "time). Kernel throughput per op class: see below.",
              "- cold start: load (with the runtime's sha256 check of the files) + first inference, fresh process; "
              "peak RSS: the process high-water mark over load, first inference and timing.",
              "- size: artifact files (PyTorch: fp32 parameters and buffers).",
              "- head stage of exported targets: full − backbone (derived); backbone of exported targets: the ViT "
              "exported alone (embedding output).", ""]
    return "\n".join(lines)


def _policy(p: dict) -> str:
    return (f"warm-up ≥ {p['warmup']} calls, then ≥ {p['min_iters']} calls and ≥ {p['min_time']} s until the "
            f"median is stable within {100 * p['rel_tol']:.0f} % (cap {p['max_iters']} calls / {p['max_time']} s)")


def to_csv(data: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in data["rows"]:
        w.writerow({k: ("" if v is None else v) for k, v in flat(r).items()})
    return buf.getvalue()


def plot_latency(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, s) for m in data["models"] for s in ("full", "backbone", "head")
              if any(r["model"] == m and r["stage"] == s and r.get("median_ms") for r in data["rows"])]
    if not panels:
        panels = [(m, "full") for m in data["models"]]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), squeeze=False)
    batches = data["settings"]["batches"]
    for ax, (model, stage) in zip(axes[:, 0], panels):
        rows = [r for r in data["rows"] if r["model"] == model and r["stage"] == stage]
        labels = list(dict.fromkeys(f"{r['target']}\n{r['precision']}" for r in rows))
        width = 0.8 / max(1, len(batches))
        for i, b in enumerate(batches):
            vals = []
            for label in labels:
                r = next((r for r in rows if f"{r['target']}\n{r['precision']}" == label and r["batch"] == b), None)
                vals.append(r["median_ms"] / b if r and (r.get("median_ms") or 0) > 0 else 0.0)
            xs = [j + (i - (len(batches) - 1) / 2) * width for j in range(len(labels))]
            ax.bar(xs, vals, width, label=f"batch {b} (ms per face)")
            for x, v, label in zip(xs, vals, labels):
                if v == 0 and i == 0:
                    r = next((r for r in rows if f"{r['target']}\n{r['precision']}" == label), {})
                    ax.text(x, 0.03, r.get("status", "n/a"), ha="center", va="bottom", fontsize=7, rotation=90,
                            transform=ax.get_xaxis_transform(), color="gray")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("ms per face (median)")
        if _spread(rows) > 20:
            ax.set_yscale("log")
        ax.set_title(f"{model} — {stage}", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _spread(rows) -> float:
    vals = [r["median_ms"] / r["batch"] for r in rows if (r.get("median_ms") or 0) > 0]
    return max(vals) / min(vals) if vals else 1.0


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the (latency, metric) points no other point beats in both, sorted by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1] if higher_is_better else points[i][1]))
    front, best = [], None
    for i in order:
        m = points[i][1]
        if best is None or (m > best if higher_is_better else m < best):
            front.append(i)
            best = m
    return front


def plot_pareto(data: dict, model: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = data["models"][model]
    metric = info.get("metric")
    b0 = data["settings"]["batches"][0]
    rows = [r for r in data["rows"] if r["model"] == model and r["stage"] == "full" and r["batch"] == b0
            and r.get("median_ms") and r.get("metric") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if rows:
        pts = [(r["median_ms"], r["metric"]) for r in rows]
        higher = metric == "f1_mean"
        front = pareto_front(pts, higher)
        for r, (x, y) in zip(rows, pts):
            ax.scatter(x, y, s=40)
            ax.annotate(f"{r['target']} {r['precision']}", (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        fx = [pts[i][0] for i in front]
        fy = [pts[i][1] for i in front]
        ax.plot(fx, fy, "--", color="gray", lw=1, label="Pareto front")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no accuracy measured", ha="center", va="center", transform=ax.transAxes)
    ax.yaxis.get_major_formatter().set_useOffset(False)
    ax.set_xlabel(f"latency ms (median, batch {b0})")
    ax.set_ylabel(f"{metric or 'metric'} (%)" + (" ↓ better" if metric == "nme_io" else " ↑ better"))
    ax.set_title(f"{model}: accuracy vs latency ({info.get('weights', '')[:60]})", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def plan_markdown(data: dict) -> str:
    """The plan of a dry run: what would be measured, exported, and why the rest is not."""
    s = data["settings"]
    env = data["environment"]
    lines = ["# farl-edge bench — plan (dry run)", "",
             f"- command: `{data.get('command') or '(python API)'}`",
             f"- platform: {env['platform']}; PyTorch rows on {s['device']}; GPU: "
             + ("; ".join(f"{g['name']} ({g['compute_capability']})" for g in env["gpus"]) or "none"),
             f"- batches {s['batches']}, stages {s['stages']}, time budget: "
             + (f"{s['budget_s']:.0f} s" if s.get("budget_s") else "none"), "",
             "| model | task | evaluation data | calibration data |", "| --- | --- | --- | --- |"]
    for name, m in data["models"].items():
        lines.append(f"| {name} | {m['task']} | {m['eval_data'] or '– (random timing inputs, no accuracy)'} | "
                     f"{m['calib_data'] or '–'} |")
    lines += ["", "| model | target | precision | stage | batch | status | artifact / reason |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in data["rows"]:
        what = r.get("reason") or r.get("artifact") or ""
        lines.append(f"| {r['model']} | {r['target']} | {r['precision']} | {r['stage']} | {r['batch']} | "
                     f"{r['status']} | {what} |")
    if data.get("exports"):
        lines += ["", f"## Artifacts ({sum(not e['cached'] for e in data['exports'].values())} to export)", ""]
        for name, e in data["exports"].items():
            lines.append(f"- {name}: {'cached' if e['cached'] else 'export'} {e['target']} {e['precision']}"
                         + (f" {e['export']}" if e["export"] else ""))
    if data.get("not_measured"):
        lines += ["", "## Not measured (no such path)", ""]
        for key in dict.fromkeys((x["target"], x["precision"], x["reason"]) for x in data["not_measured"]):
            lines.append(f"- {key[0]} {key[1]}: {key[2]}")
    return "\n".join(lines) + "\n"


def write_plan(data: dict, out: Path) -> dict[str, Path]:
    out = Path(out)
    paths = {"json": out / "plan.json", "md": out / "plan.md", "command": out / "command.txt"}
    data = portable(data)  # committed results name no folder of the machine they ran on
    atomic_write(paths["json"], json.dumps(data, indent=1, default=str) + "\n")
    atomic_write(paths["md"], plan_markdown(data))
    atomic_write(paths["command"], (data.get("command") or "(python API)") + "\n")
    return paths


def write_all(data: dict, out: Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "bench.md", "csv": out / "bench.csv", "json": out / "bench.json",
             "latency_png": out / "latency.png", "command": out / "command.txt"}
    data = portable(data)  # committed results name no folder of the machine they ran on
    atomic_write(paths["json"], json.dumps(data, indent=1, default=str) + "\n")
    atomic_write(paths["csv"], to_csv(data))
    atomic_write(paths["md"], markdown(data))
    atomic_write(paths["command"], (data.get("command") or "(python API)") + "\n")
    plot_latency(data, paths["latency_png"])
    for model in data["models"]:
        p = out / f"pareto-{model}.png"
        plot_pareto(data, model, p)
        paths[f"pareto_{model}"] = p
    return paths
