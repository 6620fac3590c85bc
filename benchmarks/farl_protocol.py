#!/usr/bin/env python
"""What FaRL's evaluation protocol costs and changes, against the direct (edge) path.

``farl`` protocol: float warp to a crop of 512/448 × the network size, resized to the network
inside the model, results back through the crop frame. ``direct``: uint8 warp straight to the
network size. For each model this measures, on the same faces:

- ``--metrics``: the task metric over the whole validation set under each protocol (PyTorch fp32,
  the shipped weights). The small models were trained on direct crops, so this is how much the
  resampling path alone moves a trained model's metric (FaRL's official B/16 weights, not
  available offline, would show the reverse: trained on FaRL's protocol);
- ``--timing``: per-face preprocessing (crop matrix + warp + tensor layout) and the model's
  latency under each protocol (ONNX Runtime fp32, batch 1, ``--threads``), medians. Run it on an
  idle machine.

Usage::

    python benchmarks/farl_protocol.py --model farl-small-300w farl-small-celebm --metrics
    python benchmarks/farl_protocol.py --model farl-b16-celebm-448 --random-init --timing --json out.json --md out.md
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FARL_RATIO = 512 / 448  # FaRL's crop over its network input


def with_protocol(model, protocol: str):
    """``model`` under ``protocol``, its farl crop at FaRL's 512/448 ratio of the network size."""
    model.cfg = model.cfg.with_protocol(protocol, crop_size=int(round(model.cfg.input_size * FARL_RATIO)))
    return model


def metrics(name: str, random_init: bool) -> dict:
    from farl_edge.datasets import open_dataset
    from farl_edge.evaluate import evaluate
    from farl_edge.export.calibration import shared_data_dir
    from farl_edge.models import create_model
    from farl_edge.models.predictor import TorchPredictor

    out = {}
    for protocol in ("direct", "farl"):
        model = with_protocol(create_model(name, pretrained=not random_init), protocol)
        data = shared_data_dir(model.cfg.task, "eval")
        m = evaluate(TorchPredictor(model), open_dataset(data), batch_size=8)
        out[protocol] = {k: v for k, v in m.items() if not isinstance(v, dict)}
        out["data"] = str(data)
    return out


def _median_ms(fn, iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def timing(name: str, random_init: bool, threads: int, iters: int) -> dict:
    from farl_edge import crops
    from farl_edge.datasets import open_dataset
    from farl_edge.evaluate import prepare
    from farl_edge.export import ExportRequest, export
    from farl_edge.export.calibration import shared_data_dir
    from farl_edge.models import create_model
    from farl_edge.runtime import load

    out = {}
    for protocol in ("direct", "farl"):
        model = with_protocol(create_model(name, pretrained=not random_init), protocol)
        sample = next(iter(open_dataset(shared_data_dir(model.cfg.task, "eval"))))
        prep = _median_ms(lambda: crops.to_tensor_layout(prepare(sample, model.cfg)[0][None]), iters * 4)
        with tempfile.TemporaryDirectory() as tmp:
            export(ExportRequest(model=model, target="onnx", precision="fp32", output=Path(tmp) / "a", eval_size=2,
                                 log=lambda *_: None))
            session = load(Path(tmp) / "a", threads=threads)
            x = crops.to_tensor_layout(prepare(sample, model.cfg)[0][None])
            infer = _median_ms(lambda: session(x), iters)
        out[protocol] = {"crop_size": model.cfg.crop_size, "network_size": model.cfg.input_size,
                         "preprocess_ms": round(prep, 3), "infer_ms": round(infer, 2)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", nargs="+", required=True)
    ap.add_argument("--random-init", action="store_true", help="no weights (timing only: metrics mean nothing)")
    ap.add_argument("--metrics", action="store_true")
    ap.add_argument("--timing", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json")
    ap.add_argument("--md")
    args = ap.parse_args(argv)
    if not (args.metrics or args.timing):
        ap.error("pass --metrics and/or --timing")
    from farl_edge.bench.hardware import detect_cpu

    report = {"command": "python benchmarks/farl_protocol.py " + " ".join(map(shlex.quote, argv or sys.argv[1:])),
              "cpu": dataclasses.asdict(detect_cpu()), "models": {}}
    for name in args.model:
        entry = {}
        if args.metrics:
            entry["metrics"] = metrics(name, args.random_init)
        if args.timing:
            entry["timing"] = timing(name, args.random_init, args.threads, args.iters)
        report["models"][name] = entry
        print(json.dumps({name: entry}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.md:
        lines = [f"`{report['command']}`", "", f"CPU: {report['cpu']['model']}, flags "
                 f"{' '.join(f for f in report['cpu']['flags'] if f.startswith(('avx512', 'amx')))}", ""]
        for name, entry in report["models"].items():
            if "metrics" in entry:
                m = entry["metrics"]
                key = "f1_mean" if "f1_mean" in m["direct"] else "nme_io"
                lines += [f"**{name}** on {m['data']} ({m['direct'].get('n')} faces)", "",
                          f"| protocol | {key} |", "| --- | --- |",
                          *(f"| {p} | {m[p][key]:.3f} |" for p in ("direct", "farl")), ""]
            if "timing" in entry:
                t = entry["timing"]
                lines += [f"**{name}** timing (ONNX Runtime fp32, batch 1, {args.threads} threads, medians)", "",
                          "| protocol | crop → network | preprocess ms | infer ms |", "| --- | --- | --- | --- |",
                          *(f"| {p} | {t[p]['crop_size']} → {t[p]['network_size']} | {t[p]['preprocess_ms']} | "
                            f"{t[p]['infer_ms']} |" for p in ("direct", "farl")), ""]
        Path(args.md).write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
