"""Draw the pre-training ablation: validation metric per epoch for each fine-tuning start, one panel per task.

    python train/plot_ablation.py train/results/pretraining-ablation-spec.json --output train/results/pretraining-ablation

The spec names, per panel, the metric and one history file per arm: a run's ``result.json``
(``train/finetune.py``) or a shipped model card ``.json`` (its ``history``). Writes
``<output>.json`` (the curves, so the figure can be redrawn without the run folders) and
``<output>.png``. Refuses to overwrite either unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from farl_edge.fileio import atomic_write_json, atomic_write_with


def read_history(path: Path, metric: str) -> list[tuple[int, float]]:
    """(epoch, metric) pairs of a result.json or model card; a clear error when either is missing."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: cannot read history file {path}: {e}")
    history = record.get("history")
    if not history:
        raise SystemExit(f"error: {path} has no 'history' (expected a train/finetune.py result.json or a model card)")
    points = [(int(h["epoch"]), float(h[metric])) for h in history if metric in h]
    if not points:
        raise SystemExit(f"error: {path}'s history has no {metric!r}; its keys: {sorted(history[0])}")
    return points


def collect(spec: dict, base: Path) -> dict:
    panels = []
    for panel in spec["panels"]:
        arms = {label: read_history(base / path, panel["metric"]) for label, path in panel["arms"].items()}
        panels.append({**{k: v for k, v in panel.items() if k != "arms"}, "curves": arms})
    return {"title": spec.get("title", ""), "panels": panels}


def draw(curves: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curves["panels"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for label, points in panel["curves"].items():
            epochs, values = zip(*points)
            ax.plot(epochs, values, marker="o", label=f"{label} ({values[-1]:.2f})")
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("fine-tuning epoch")
        ax.set_ylabel(panel["metric"] + (" (lower is better)" if panel.get("lower_is_better") else " (higher is better)"))
        if "ylim" in panel:
            ax.set_ylim(*panel["ylim"])
        if "target" in panel:
            ax.axhline(panel["target"], color="grey", linestyle="--", linewidth=1, label=f"target {panel['target']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(curves["title"], fontsize=11)
    fig.tight_layout()
    atomic_write_with(png, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec", type=Path,
                        help="JSON: {title, panels: [{title, metric, lower_is_better, target, arms: {label: path}}]}")
    parser.add_argument("--output", type=Path, required=True, help="output stem: writes <stem>.json and <stem>.png")
    parser.add_argument("--base", type=Path, default=Path("."), help="folder the spec's paths are relative to")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    args = parser.parse_args(argv)

    outputs = [args.output.with_suffix(".json"), args.output.with_suffix(".png")]
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not args.overwrite:
        print(f"error: {', '.join(existing)} already exist; pass --overwrite to replace them", file=sys.stderr)
        return 2
    try:
        spec = json.loads(args.spec.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: cannot read spec {args.spec}: {e}", file=sys.stderr)
        return 2
    curves = collect(spec, args.base)
    atomic_write_json(outputs[0], curves)
    draw(curves, outputs[1])
    print(f"wrote {outputs[0]} and {outputs[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
