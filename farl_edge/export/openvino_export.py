"""OpenVINO: torch2openvino / onnx2openvino → save (fp16-compressed weights) → NNCF PTQ INT8.

Measured on farl-small-300w (openvino 2026.4): see ``CONVERT_FROM`` below.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from farl_edge.export.formats import BUILDER_OPTIONS, BuildJob, BuildResult
from farl_edge.utils import quiet, run_fixed_batch

# Conversion route, chosen by measurement (farl-small-300w, batch 1, f32 hint, 2 shared cores):
# from the dynamo ONNX file: 542 ops, 24 s (export included), max |Δ| 5e-5 px landmarks / 1.5e-7 heatmaps;
# from the PyTorch module (ov.convert_model traces it): 1472 ops, 29 s, max |Δ| 7e-5 px / 1.8e-7.
# Both exact; the ONNX route gives a 2.7x smaller graph and is no slower.
CONVERT_FROM = "onnx"


def _name_io(ov_model, export_cfg) -> None:
    ov_model.inputs[0].get_tensor().set_names({export_cfg.input_name})
    for out, name in zip(ov_model.outputs, export_cfg.output_names):
        out.get_tensor().set_names({name})


def _pin_batch(ov_model, export_cfg) -> None:
    import openvino as ov

    s = export_cfg.input_size
    batch = -1 if export_cfg.batch is None else export_cfg.batch
    ov_model.reshape({ov_model.inputs[0].get_any_name(): ov.PartialShape([batch, 3, s, s])})


def torch2openvino(model, export_cfg):
    """ov.convert_model straight from the PyTorch module."""
    import openvino as ov
    import torch

    s = export_cfg.input_size
    example = torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(0))
    with quiet("nncf"), torch.no_grad():
        ov_model = ov.convert_model(model, example_input=example, input=[(-1, 3, s, s)])
    _name_io(ov_model, export_cfg)
    _pin_batch(ov_model, export_cfg)
    return ov_model


def onnx2openvino(onnx_path: Path, export_cfg):
    """ov.convert_model from a plain (un-fused, standard-domain) ONNX file."""
    import openvino as ov

    with quiet("nncf"):
        ov_model = ov.convert_model(str(onnx_path))
    _name_io(ov_model, export_cfg)
    _pin_batch(ov_model, export_cfg)
    return ov_model


def count_quantized(ov_model) -> dict:
    ops = [op.get_type_name() for op in ov_model.get_ops()]
    return {"FakeQuantize": ops.count("FakeQuantize"), "FakeConvert": ops.count("FakeConvert"), "ops": len(ops)}


def output_tail(ov_model) -> list[str]:
    """Friendly names of the ops downstream of a model output (the soft-argmax landmark decoder
    after ``heatmaps``): NNCF must leave them in float (see onnxruntime_quant for the numbers)."""
    producers = {out.get_node().get_friendly_name() for out in
                 (r.input_value(0) for r in ov_model.get_results())}
    reach, tail = set(producers), []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() in ("Result", "Constant", "Parameter"):
            continue
        if any(v.get_node().get_friendly_name() in reach for v in op.input_values()):
            reach.add(op.get_friendly_name())
            tail.append(op.get_friendly_name())
    return tail


def output_layers(ov_model) -> list[str]:
    """Friendly names of the last convolution / MatMul before each model output (the output
    projection): kept in float, as for ONNX Runtime / TensorRT (``onnxruntime_quant.output_layers``)."""
    gemm = {t for types in OV_OP_TYPES.values() for t in types}
    found, seen = [], set()
    stack = [r.input_value(0).get_node() for r in ov_model.get_results()]
    while stack:
        op = stack.pop()
        name = op.get_friendly_name()
        if name in seen or op.get_type_name() in ("Constant", "Parameter"):
            continue
        seen.add(name)
        if op.get_type_name() in gemm:
            found.append(name)
        else:
            stack.extend(v.get_node() for v in op.input_values())
    return sorted(found)


# ONNX op types (the --int8-ops vocabulary shared with ONNX Runtime / TensorRT) → OpenVINO op types.
OV_OP_TYPES = {"MatMul": ("MatMul",), "Conv": ("Convolution", "GroupConvolution"),
               "ConvTranspose": ("ConvolutionBackpropData", "GroupConvolutionBackpropData")}


def ignored_op_types(int8_op_types) -> list[str]:
    """OpenVINO op types NNCF must leave in float when only ``int8_op_types`` are to be quantised."""
    if not int8_op_types or list(int8_op_types) == ["all"]:
        return []
    unknown = sorted(set(int8_op_types) - set(OV_OP_TYPES))
    if unknown:
        raise ValueError(f"openvino --int8-ops takes {', '.join(OV_OP_TYPES)} or 'all', not {', '.join(unknown)}")
    return [t for onnx_type, ov_types in OV_OP_TYPES.items() if onnx_type not in int8_op_types for t in ov_types]


def quantize_nncf(ov_model, calibration, cfg, export_cfg, *, max_drop: float | None = None, evaluation=None,
                  int8_op_types=None, preset: str = "mixed", log=print) -> tuple[object, dict]:
    """NNCF post-training INT8 (transformer model type: SmoothQuant), or accuracy-controlled when
    ``max_drop`` is given (task metric on ``evaluation``: NME_io for alignment, F1 for parsing).
    ``int8_op_types``: quantise only these ONNX op types (the others stay at the device's float).
    ``preset``: mixed (asymmetric activations, the default) or performance (symmetric activations)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    presets = BUILDER_OPTIONS["nncf_preset"].choices  # the --nncf-preset choices: NNCF's preset names, lower case
    if preset not in presets:
        raise ValueError(f"openvino nncf_preset must be one of {', '.join(presets)}, not {preset!r}")
    nncf_preset = getattr(nncf.QuantizationPreset, preset.upper())
    batch = export_cfg.batch or 1
    data = list(calibration.batches(cfg, batch))
    # Activation ranges from a histogram (outliers clipped) rather than min/max: with min/max the
    # edge alignment model's worst-face heatmap cosine was 0.99858 (< 0.999 gate); histogram 0.99917.
    advanced = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.HISTOGRAM)
    calib = nncf.Dataset(data)
    tail = output_tail(ov_model) + output_layers(ov_model)
    float_types = ignored_op_types(int8_op_types)
    ignored = nncf.IgnoredScope(names=tail, types=float_types, validate=False) if tail or float_types else None
    info = {"tool": "nncf", "version": nncf.__version__, "model_type": "TRANSFORMER", "preset": preset.upper(),
            "activation_ranges": "histogram", "calibration_batches": len(data), "ignored": tail,
            "float_op_types": float_types}
    with quiet("nncf"):
        if max_drop is None:
            q = nncf.quantize(ov_model, calib, model_type=nncf.ModelType.TRANSFORMER, preset=nncf_preset,
                              subset_size=len(data) * batch, ignored_scope=ignored, advanced_parameters=advanced)
        else:
            if evaluation is None:
                raise ValueError("--max-drop needs annotated evaluation faces")
            validate, metric = _validation_fn(cfg, export_cfg)
            log(f"accuracy-controlled quantisation: {metric} may drop by at most {max_drop}")
            q = nncf.quantize_with_accuracy_control(
                ov_model, calib, nncf.Dataset(list(evaluation.samples)), validation_fn=validate, max_drop=max_drop,
                drop_type=nncf.DropType.ABSOLUTE, model_type=nncf.ModelType.TRANSFORMER,
                preset=nncf_preset, subset_size=len(data) * batch, ignored_scope=ignored,
                advanced_quantization_parameters=advanced)
            info.update(accuracy_control={"metric": metric, "max_drop": max_drop, "faces": len(evaluation)})
    info.update(count_quantized(q))
    return q, info


def _validation_fn(cfg, export_cfg):
    """NNCF validation function: higher is better, so alignment returns -NME_io."""
    from farl_edge.evaluate import evaluate

    class _Compiled:
        def __init__(self, compiled):
            self.compiled, self.config = compiled, cfg

        def run(self, batch):
            r = self.compiled(batch)
            return {name: np.asarray(r[o]) for name, o in zip(export_cfg.output_names, self.compiled.outputs)}

        def __call__(self, batch):
            return run_fixed_batch(self.run, batch, export_cfg.batch or len(batch))

    metric = "f1_mean" if cfg.task == "parsing" else "nme_io"

    def validate(compiled_model, samples) -> float:
        result = evaluate(_Compiled(compiled_model), list(samples), progress=False)
        return float(result["f1_mean"]) if cfg.task == "parsing" else -float(result["nme_io"])

    return validate, metric


def build(job: BuildJob) -> BuildResult:
    """Builder of target ``openvino`` (see farl_edge.export.formats)."""
    import openvino as ov

    from farl_edge.export.onnx_export import onnx_check, torch2onnx
    from farl_edge.runtime.backends.openvino_backend import default_inference_precision

    opts = job.options
    route = opts.get("openvino_from") or CONVERT_FROM
    info: dict = {"converted_from": route}
    if route == "onnx":
        onnx_path = job.workdir / "exported.onnx"
        job.log(f"torch → onnx ({job.export_cfg.exporter}) → openvino")
        torch2onnx(job.model, onnx_path, job.export_cfg)
        onnx_check(onnx_path)
        ov_model = onnx2openvino(onnx_path, job.export_cfg)
    elif route == "torch":
        job.log("torch → openvino (ov.convert_model)")
        ov_model = torch2openvino(job.model, job.export_cfg)
    else:
        raise ValueError(f"openvino_from must be 'onnx' or 'torch', not {route!r}")
    if job.precision == "int8":
        job.log(f"NNCF INT8 PTQ, {len(job.calibration)} calibration faces")
        ov_model, info["quantization"] = quantize_nncf(ov_model, job.calibration, job.cfg, job.export_cfg,
                                                       max_drop=opts.get("max_drop"), evaluation=job.evaluation,
                                                       int8_op_types=opts.get("int8_op_types"),
                                                       preset=opts.get("nncf_preset") or "mixed", log=job.log)
    device_default = default_inference_precision()
    # What the artifact is validated (and by default run) with: fp32 means f32 (not the silent
    # bf16 of AMX CPUs); fp16 = fp16-compressed weights computed in f32; int8 leaves the float
    # layers to the device default (bf16 on AMX). --inference-precision / recipes override it.
    wanted = opts.get("inference_precision") or {"fp32": "f32", "fp16": "f32", "int8": "default"}[job.precision]
    ov.save_model(ov_model, str(job.folder / "model.xml"), compress_to_fp16=job.precision == "fp16")
    info.update(count_quantized(ov_model))
    tolerance = None
    effective = device_default if wanted == "default" else wanted
    if job.precision == "fp32" and effective == "bf16":
        tolerance = "bf16"
    return BuildResult(
        model_file="model.xml", runtime_options={"inference_precision": wanted, "performance_hint": "LATENCY"},
        opset=job.export_cfg.opset if route == "onnx" else None, tolerance=tolerance,
        info={**info, "device_default_inference_precision": device_default,
              "inference_precision": effective, "files": ["model.xml", "model.bin"]})
