#!/usr/bin/env python
"""What limits OpenVINO INT8 on the full FaRL model at 448? Quantisation variants, timed and profiled.

Starts from the fp32 OpenVINO IR of a bench run (``<cache>/artifacts/<model>-full-openvino-fp32-b1``)
and builds variants:

| variant | what |
| --- | --- |
| ``f32`` | the fp32 IR, INFERENCE_PRECISION_HINT=f32 (reference for the cosine) |
| ``bf16`` | the fp32 IR, hint bf16 (OpenVINO's default on AMX) |
| ``ptq-transformer-mixed`` | NNCF PTQ as ``farl-edge export`` does it: model_type TRANSFORMER (SmoothQuant α 0.95 on MatMul), preset MIXED |
| ``ptq-transformer-performance`` | same, preset PERFORMANCE (symmetric activations) |
| ``ptq-transformer-nosq`` | TRANSFORMER, MIXED, SmoothQuant off |
| ``ptq-cnn-performance`` | model_type None (no transformer ignored patterns: attention MatMuls and more get quantised), PERFORMANCE |
| ``wc-int8-dynq`` | weights-only INT8 (nncf.compress_weights INT8_ASYM) + the CPU plugin's dynamic activation quantisation (DYNAMIC_QUANTIZATION_GROUP_SIZE=32) for FullyConnected |

Each variant: median latency (batch of the IR, ``--threads``), cosine of the output against ``f32``
on real face crops, and the share of profiled node time per compute precision (PERF_COUNT, as in
``openvino_profile.py``), plus the layer types that cost most.

Usage::

    python benchmarks/openvino_int8_study.py --ir CACHE/artifacts/farl-b16-celebm-448-full-openvino-fp32-b1 \
        --inputs CACHE/inputs/farl-b16-celebm-448-eval-16.npy --calib ../shared/data/celebamask-hq/train \
        --out benchmarks/results/intel-amx-2c/int8-study
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openvino_profile import kernel_precision  # noqa: E402

VARIANTS = ("f32", "bf16", "ptq-transformer-mixed", "ptq-transformer-performance", "ptq-transformer-nosq",
            "ptq-cnn-performance", "wc-int8-dynq")


def build_variant(name: str, fp32_xml: Path, calib: list, work: Path, log, prebuilt: dict | None = None):
    """(path of the IR to compile, compile config) for a variant; quantised IRs cached in ``work``."""
    import nncf
    import openvino as ov

    if prebuilt and name in prebuilt:
        return prebuilt[name], {}
    if name == "f32":
        return fp32_xml, {"INFERENCE_PRECISION_HINT": "f32"}
    if name == "bf16":
        return fp32_xml, {"INFERENCE_PRECISION_HINT": "bf16"}
    out = work / f"{name}.xml"
    config = {}
    if name == "wc-int8-dynq":
        config = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32}
    if out.is_file():
        return out, config
    model = ov.Core().read_model(str(fp32_xml))
    t0 = time.time()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    ds = nncf.Dataset(calib)
    if name == "ptq-transformer-mixed":
        q = nncf.quantize(model, ds, model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED,
                          subset_size=len(calib))
    elif name == "ptq-transformer-performance":
        q = nncf.quantize(model, ds, model_type=nncf.ModelType.TRANSFORMER,
                          preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(calib))
    elif name == "ptq-transformer-nosq":
        adv = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
        q = nncf.quantize(model, ds, model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED,
                          subset_size=len(calib), advanced_parameters=adv)
    elif name == "ptq-cnn-performance":
        q = nncf.quantize(model, ds, preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(calib))
    elif name == "wc-int8-dynq":
        q = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    else:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    ov.save_model(q, str(out), compress_to_fp16=False)
    log(f"  built {name} in {time.time() - t0:.0f} s")
    return out, config


def run_variant(xml: Path, config: dict, inputs: np.ndarray, threads: int, iters: int):
    import openvino as ov

    from farl_edge.bench.timing import TimingPolicy, measure

    core = ov.Core()
    base = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, **config}
    compiled = core.compile_model(str(xml), "CPU", base)
    req = compiled.create_infer_request()
    b = int(compiled.inputs[0].get_partial_shape()[0].get_length())
    x = inputs[:b]
    timing = measure(lambda: req.infer({0: x}), TimingPolicy(warmup=1, min_iters=iters, min_time=0, max_time=120))
    outs = []
    for i in range(0, len(inputs) - b + 1, b):
        r = req.infer({0: inputs[i:i + b]})
        outs.append(np.array(r[compiled.outputs[-1]], np.float32))
    ops = [op.get_type_name() for op in compiled.get_runtime_model().get_ops()]
    # profile
    prof = core.compile_model(str(xml), "CPU", {**base, "PERF_COUNT": "YES"})
    preq = prof.create_infer_request()
    preq.infer({0: x})
    preq.infer({0: x})
    by_prec, by_type = {}, {}
    for p in preq.get_profiling_info():
        if p.status != p.Status.EXECUTED:
            continue
        ms = p.real_time.total_seconds() * 1e3
        k = kernel_precision(p.exec_type)
        by_prec[k] = by_prec.get(k, 0.0) + ms
        key = f"{p.node_type} [{k}]"
        by_type[key] = by_type.get(key, 0.0) + ms
    return {"median_ms": timing.stats()["median_ms"], "p90_ms": timing.stats()["p90_ms"], "iters": timing.iters,
            "outputs": np.concatenate(outs), "precision_used": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
            "runtime_ops": len(ops), "profile_by_precision": by_prec,
            "profile_top": dict(sorted(by_type.items(), key=lambda kv: -kv[1])[:8])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ir", required=True, help="artifact folder of the fp32 OpenVINO IR (batch 1)")
    p.add_argument("--inputs", required=True, help=".npy of face crops (N, 3, S, S)")
    p.add_argument("--calib", required=True, help="calibration faces (annotated data set folder)")
    p.add_argument("--calib-size", type=int, default=16)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--faces", type=int, default=8, help="faces for the cosine")
    p.add_argument("--int8-ir", help="artifact folder of the bench's openvino int8 export: used as "
                                     "ptq-transformer-mixed instead of quantising again")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from farl_edge.export.calibration import open_faces
    from farl_edge.export.validate import cosine
    from farl_edge.registry import ModelConfig

    ir = Path(args.ir)
    manifest = json.loads((ir / "manifest.json").read_text())
    cfg = ModelConfig.from_dict(manifest["model"])
    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    inputs = np.load(args.inputs)[: args.faces].astype(np.float32)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    calib = None
    prebuilt = {}
    if args.int8_ir:
        m8 = json.loads((Path(args.int8_ir) / "manifest.json").read_text())
        prebuilt["ptq-transformer-mixed"] = Path(args.int8_ir) / m8["model_file"]
    results, ref = [], None
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    for name in ["f32"] + [v for v in variants if v != "f32"]:
        if calib is None and name not in ("f32", "bf16", *prebuilt):
            faces = open_faces(args.calib, args.calib_size, purpose="calibration")
            calib = [faces.inputs(cfg)[i:i + 1] for i in range(len(faces))]
        log(f"variant {name}")
        xml, config = build_variant(name, ir / manifest["model_file"], calib, work, log, prebuilt)
        r = run_variant(xml, config, inputs, args.threads, args.iters)
        outputs = r.pop("outputs")
        if name == "f32":
            ref = outputs
        cos = [cosine(a, b) for a, b in zip(ref, outputs)]
        tot = sum(r["profile_by_precision"].values()) or 1.0
        r.update(variant=name, config={k: str(v) for k, v in config.items()}, cosine_mean=float(np.mean(cos)),
                 cosine_min=float(np.min(cos)),
                 profile_share={k: round(100 * v / tot, 1) for k, v in r["profile_by_precision"].items()})
        results.append(r)
        log(f"  {r['median_ms']:.1f} ms, cosine {r['cosine_mean']:.6f}, precision split {r['profile_share']}")
        (out / "int8-study.json").write_text(json.dumps(results, indent=1))
    lines = [f"# OpenVINO INT8 study — {cfg.name}, batch 1, {args.threads} threads", "",
             f"`python benchmarks/openvino_int8_study.py {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
             "| variant | median ms | p90 ms | cosine vs f32 (mean / min) | node time by compute precision (%) "
             "| top layer types (ms) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        share = ", ".join(f"{k} {v}" for k, v in sorted(r["profile_share"].items(), key=lambda kv: -kv[1]))
        top = ", ".join(f"{k} {v:.0f}" for k, v in list(r["profile_top"].items())[:5])
        lines.append(f"| {r['variant']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['cosine_mean']:.5f} / "
                     f"{r['cosine_min']:.5f} | {share} | {top} |")
    (out / "int8-study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
