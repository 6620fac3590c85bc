#!/usr/bin/env python
"""Where does an OpenVINO artifact spend its time? Per-op profile (PERF_COUNT) by layer type and kernel.

For each artifact folder (``farl-edge export`` / ``farl-edge bench`` cache) and inference precision,
compiles the model with ``PERF_COUNT=YES``, runs ``--iters`` inferences on real face crops (or
random input), and sums OpenVINO's per-node ``real_time`` over the executed nodes, grouped by
layer type and by kernel (``exec_type``: e.g. ``brgconv_avx512_amx_I8`` = AMX int8 convolution,
``brgemm_avx512_amx_bf16`` = AMX bf16 matmul, ``jit_avx512_FP32`` = fp32 vector code). That says
which ops run in int8 / bf16 / fp32 and what each costs, i.e. what limits INT8 against the floor.

Usage::

    python benchmarks/openvino_profile.py ART_DIR[:f32|bf16|default] ... [--iters 5] [--threads 2]
        [--config KEY=VALUE ...] [--json out.json] [--md out.md]

``--floor`` adds the op-class table: profiled time of the GEMMs (FullyConnected), attention
matmuls (MatMul / ScaledDotProductAttention), convolutions and everything else, each against the
model's measured floor for that class (``farl_edge.bench.floor``: its own shapes timed alone here).

``--md`` writes the whole report: the command, the heaviest node (ms, share, and for a convolution
its GMACs, TMAC/s and share of this CPU's peak) and every table; nothing in it is written by hand.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np


def kernel_precision(exec_type: str) -> str:
    """The compute precision a CPU kernel name says (I8 / BF16 / FP32 / FP16)."""
    t = exec_type.upper()
    for tag, name in (("I8", "int8"), ("U8", "int8"), ("BF16", "bf16"), ("F16", "fp16"), ("FP16", "fp16"),
                      ("FP32", "fp32"), ("F32", "fp32")):
        if re.search(rf"(^|_){tag}($|_)", t):
            return name
    return "other"


# OpenVINO CPU node types → the op classes of farl_edge.bench.floor
OP_CLASS = {"FullyConnected": "gemm", "FullyConnectedQuantizedLegacy": "gemm", "FullyConnectedCompressed": "gemm",
            "MatMul": "attention", "ScaledDotProductAttention": "attention",
            "Convolution": "conv", "GroupConvolution": "conv", "ConvolutionBackpropData": "conv",
            "GroupConvolutionBackpropData": "conv"}


def attention_node_names(model) -> set[str]:
    """Friendly names of the IR's attention nodes: ScaledDotProductAttention, and MatMuls whose two
    operands are both activations (a MatMul with a weight operand, even behind FakeQuantize /
    Convert / Multiply, is a linear layer)."""
    constant_fed: set[str] = set()  # nodes computed from constants only, in topological order
    names = set()
    for op in model.get_ordered_ops():
        kind, name = op.get_type_name(), op.get_friendly_name()
        inputs = [op.input_value(i).get_node().get_friendly_name() for i in range(op.get_input_size())]
        if kind == "Constant" or (kind != "Parameter" and inputs and all(i in constant_fed for i in inputs)):
            constant_fed.add(name)
        if kind == "ScaledDotProductAttention" or (kind == "MatMul" and not set(inputs[:2]) & constant_fed):
            names.add(name)
    return names


def op_class_of(node_type: str, originals: set[str], attention_nodes: set[str]) -> str:
    """Op class of a profiled node that executes the IR nodes ``originals``. The CPU plugin runs a
    ScaledDotProductAttention as a fused ``Subgraph``: a node executing an attention node is attention."""
    if originals & attention_nodes:
        return "attention"
    return OP_CLASS.get(node_type, "other")


PRECISION_OF_HINT = {"f32": "fp32", "bf16": "bf16", "bfloat16": "bf16", "float32": "fp32"}


def op_class_table(result: dict, artifact: Path, throughput) -> list[dict]:
    """Per op class: profiled ms vs the measured floor of the artifact's model at its compute precision.
    ``throughput``: a :class:`farl_edge.bench.floor.ThroughputCache` shared by the run's artifacts."""
    from farl_edge.bench.floor import collect_op_shapes, measured_floor
    from farl_edge.models import create_model
    from farl_edge.registry import ModelConfig

    manifest = json.loads((artifact / "manifest.json").read_text())
    cfg = ModelConfig.from_dict(manifest["model"])
    counts = collect_op_shapes(create_model(cfg, pretrained=False), int(manifest["input_size"]))
    row_precision = "int8" if manifest["precision"] == "int8" else PRECISION_OF_HINT.get(
        result["precision_used"].lower().replace("<type: '", "").rstrip("'>"), "fp32")
    floor = measured_floor(counts, row_precision, throughput)
    profiled = result["by_class"]
    rows = []
    for c in ("gemm", "attention", "conv", "other"):
        fl = floor.per_class_ms.get(c)
        rows.append({"op_class": c, "profiled_ms": profiled.get(c, 0.0), "measured_floor_ms": fl,
                     "x_floor": profiled.get(c, 0.0) / fl if fl else None,
                     "kernel_tmacs": floor.kernel_throughput.get(c)})
    result["floor_precision"] = floor.precision
    return rows


def profile(artifact: Path, precision: str, iters: int, threads: int, extra: dict, inputs: np.ndarray | None):
    import openvino as ov

    from farl_edge.bench.floor import fused_original_names

    manifest = json.loads((artifact / "manifest.json").read_text())
    config = {"PERF_COUNT": "YES", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, **extra}
    if precision != "default":
        config["INFERENCE_PRECISION_HINT"] = precision
    core = ov.Core()
    compiled = core.compile_model(str(artifact / manifest["model_file"]), "CPU", config)
    request = compiled.create_infer_request()
    shape = [int(d) for d in manifest["inputs"][0]["shape"]]
    x = inputs[: shape[0]] if inputs is not None and len(inputs) >= shape[0] else \
        np.random.default_rng(0).random(shape, dtype=np.float32)
    request.infer({0: x})  # warm-up
    graph = core.read_model(str(artifact / manifest["model_file"]))
    attention_nodes = attention_node_names(graph)
    originals = fused_original_names(compiled)
    by_type = collections.Counter()
    by_class = collections.Counter()
    by_kernel = collections.Counter()
    by_prec = collections.Counter()
    per_node = collections.Counter()
    walls = []
    for _ in range(iters):
        t0 = time.perf_counter()
        request.infer({0: x})
        walls.append((time.perf_counter() - t0) * 1e3)
        for p in request.get_profiling_info():
            if p.status != p.Status.EXECUTED:
                continue
            ms = p.real_time.total_seconds() * 1e3
            by_type[p.node_type] += ms / iters
            by_class[op_class_of(p.node_type, originals.get(p.node_name, {p.node_name}), attention_nodes)] += ms / iters
            by_kernel[(p.node_type, p.exec_type)] += ms / iters
            by_prec[kernel_precision(p.exec_type)] += ms / iters
            per_node[(p.node_name, p.node_type, p.exec_type)] += ms / iters
    used = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    graph.reshape(shape)  # static shapes, as profiled
    macs = node_macs(graph)
    top = [{"node": n, "type": t, "kernel": k, "ms": v, "gmacs": macs[n] / 1e9 if n in macs else None}
           for (n, t, k), v in per_node.most_common(15)]
    return {"artifact": artifact.name, "precision_hint": precision, "precision_used": used, "config": {
        k: str(v) for k, v in config.items()}, "wall_ms_median": float(np.median(walls)),
        "profiled_ms": sum(by_type.values()), "by_type": dict(by_type.most_common()),
        "by_class": dict(by_class.most_common()),
        "by_precision": dict(by_prec.most_common()),
        "by_kernel": [{"type": t, "kernel": k, "ms": v} for (t, k), v in by_kernel.most_common()],
        "threads": threads, "top_nodes": top}


def node_macs(model) -> dict[str, int]:
    """Multiply-accumulates per (Group)Convolution node of an OpenVINO model, by friendly name:
    output elements × input channels per group × kernel area (batch included)."""
    out = {}
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind not in ("Convolution", "GroupConvolution"):
            continue
        shape_out, shape_w = op.get_output_partial_shape(0), op.input_value(1).get_partial_shape()
        if shape_out.is_dynamic or shape_w.is_dynamic:
            continue
        w = [int(d) for d in shape_w.to_shape()]
        per_output = int(np.prod(w[2:] if kind == "GroupConvolution" else w[1:]))  # (G,) O/G, I/G, k.. | O, I, k..
        out[op.get_friendly_name()] = int(np.prod([int(d) for d in shape_out.to_shape()])) * per_output
    return out


def heaviest_node(results: list[dict]) -> list[str]:
    """The node that costs most in the first result, in every result: ms, share of node time and, for a
    convolution, GMACs, the rate reached and that rate as a share of the CPU's peak for its kernel's
    precision (farl_edge.bench.hardware: MACs/cycle/core × threads × MHz)."""
    if not results or not results[0]["top_nodes"]:
        return []
    from farl_edge.bench.hardware import cores_used, detect_cpu, peak_macs_per_cycle

    cpu = detect_cpu()
    name = results[0]["top_nodes"][0]["node"]
    lines = [f"Heaviest node: {name}"]
    for r in results:
        n = next((n for n in r["top_nodes"] if n["node"] == name), None)
        if n is None:
            lines.append(f"- {r['artifact']} (hint {r['precision_hint']}): not among its top nodes")
            continue
        text = (f"- {r['artifact']} (hint {r['precision_hint']}): {n['ms']:.1f} ms, "
                f"{100 * n['ms'] / (r['profiled_ms'] or 1):.0f} % of node time, {n['kernel']}")
        precision = kernel_precision(n["kernel"])
        if n.get("gmacs") and precision in ("int8", "bf16", "fp16", "fp32"):
            rate = n["gmacs"] / n["ms"]  # GMACs per ms = TMAC/s
            per_cycle, isa = peak_macs_per_cycle(cpu.flags, precision, cpu.zmm_ports)
            cores = cores_used(cpu, r.get("threads", 1))
            peak = per_cycle * cores * cpu.mhz * 1e6 / 1e12
            text += (f"; {n['gmacs']:.3g} GMACs → {rate:.2f} TMAC/s = {100 * rate / peak:.0f} % of the "
                     f"{precision} peak ({isa}, {cores} core(s) at {cpu.mhz:.0f} MHz)")
        lines.append(text)
    return lines + [""]


def document(results: list[dict], command: str) -> str:
    """The whole report: what ran (the command, portable paths), the heaviest node, every table."""
    from farl_edge.bench.report import portable_text

    names = ", ".join(f"{r['artifact']} (hint {r['precision_hint']})" for r in results)
    return "\n".join([f"# OpenVINO per-op profile: {names}", "",
                      f"Command: `{portable_text(command)}` ({time.strftime('%Y-%m-%d')}); every number "
                      "below is this command's output.", "", *heaviest_node(results), markdown(results)])


def markdown(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines += [f"### {r['artifact']} — hint {r['precision_hint']} (used: {r['precision_used']})", "",
                  f"wall median {r['wall_ms_median']:.1f} ms; profiled node time {r['profiled_ms']:.1f} ms", "",
                  "| compute precision | ms | % |", "| --- | --- | --- |"]
        tot = r["profiled_ms"] or 1
        lines += [f"| {k} | {v:.1f} | {100 * v / tot:.1f} |" for k, v in r["by_precision"].items()]
        lines += ["", "| layer type | kernel | ms | % |", "| --- | --- | --- | --- |"]
        lines += [f"| {k['type']} | {k['kernel']} | {k['ms']:.1f} | {100 * k['ms'] / tot:.1f} |"
                  for k in r["by_kernel"][:20]]
        if r.get("op_classes"):
            lines += ["", f"Op classes against the measured floor ({r['floor_precision']} kernels, this CPU):", "",
                      "| op class | profiled ms | measured floor ms | × floor | kernel TMAC/s |",
                      "| --- | --- | --- | --- | --- |"]
            for c in r["op_classes"]:
                fl = "–" if c["measured_floor_ms"] is None else f"{c['measured_floor_ms']:.2f}"
                x = "–" if c["x_floor"] is None else f"{c['x_floor']:.2f}"
                k = "–" if c["kernel_tmacs"] is None else f"{c['kernel_tmacs']:.3f}"
                lines.append(f"| {c['op_class']} | {c['profiled_ms']:.2f} | {fl} | {x} | {k} |")
        lines += ["", "Top nodes:", "", "| node | type | kernel | ms |", "| --- | --- | --- | --- |"]
        lines += [f"| {n['node'][:70]} | {n['type']} | {n['kernel']} | {n['ms']:.1f} |" for n in r["top_nodes"][:10]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifacts", nargs="+", help="ART_DIR[:f32|bf16|default] (default: the manifest's runtime option)")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--inputs", help=".npy of (N, 3, S, S) face crops (the bench cache's inputs/*-timing-*.npy)")
    p.add_argument("--config", action="append", default=[], help="extra compile property KEY=VALUE")
    p.add_argument("--floor", action="store_true", help="add the op-class table against the measured floor")
    p.add_argument("--json")
    p.add_argument("--md")
    args = p.parse_args(argv)
    extra = dict(kv.split("=", 1) for kv in args.config)
    inputs = np.load(args.inputs) if args.inputs else None
    from farl_edge.bench.floor import ThroughputCache

    throughput = ThroughputCache(args.threads)  # each shape once, whichever artifacts share it
    results = []
    for spec in args.artifacts:
        path, _, prec = spec.partition(":")
        path = Path(path)
        if not prec:
            prec = json.loads((path / "manifest.json").read_text()).get("runtime", {}).get("options", {}).get(
                "inference_precision") or "default"
        results.append(profile(path, prec, args.iters, args.threads, extra, inputs))
        if args.floor:
            results[-1]["op_classes"] = op_class_table(results[-1], path, throughput)
        print(markdown(results[-1:]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.md:
        command = "python benchmarks/openvino_profile.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        Path(args.md).write_text(document(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
