"""Precision applied to the ONNX graph before a TensorRT build (TensorRT 11 / TensorRT for RTX).

TensorRT 11 and TensorRT for RTX build *strongly typed* networks: there are no FP16/INT8 builder
flags and no INT8 calibrators; the types in the ONNX graph decide. So the graph is prepared first:

- fp32: the plain exported graph (no ONNX Runtime fusions: TensorRT fuses by itself and cannot
  parse ORT's ``com.microsoft`` contrib ops);
- fp16: NVIDIA ModelOpt autocast (``modelopt.onnx.autocast``) where it is importable; otherwise
  ONNX Runtime's fp16 converter, graph I/O fp32 and LayerNorm / Softmax / Sigmoid / Resize /
  reductions kept fp32 (the ONNX exporter's ``onnx2fp16`` with its block list);
- int8: explicit Q/DQ. ModelOpt ONNX PTQ (``modelopt.onnx.quantization``) where importable;
  otherwise ONNX Runtime's ``quantize_static`` in QDQ format with **symmetric** int8 activations
  and weights (TensorRT only takes zero-point 0) and per-channel weights, on the GEMM-like op
  types only (``ExportConfig.int8_op_types``; quantising every op type broke accuracy in the ONNX
  measurements), calibrated on real face crops.

The manifest records which tool produced the graph (``tool``). ``nvidia-modelopt[onnx]`` pulls
``onnxruntime-gpu`` (clashes with ``onnxruntime``), ``cupy`` and an older ``onnx``: it belongs on
GPU build machines only (the ``tensorrt`` extra), never in the CPU toolchain.
"""
from __future__ import annotations

import collections
import importlib.util
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx

from farl_edge.export.config import INT8_OP_TYPES
from farl_edge.export.onnxruntime_quant import FaceCalibrationReader, ensure_node_names, output_layers, output_tail
from farl_edge.utils import package_version, quiet

# Activation ranges: the 99.999th percentile of |x| over the calibration faces. Symmetric int8
# (TensorRT takes zero-point 0 only) spends its range on rare outliers under MinMax: measured on
# 32 test-helen faces, farl-small-300w heatmaps' worst cosine 0.99859 (MinMax) → 0.99927.
CALIB_PERCENTILE = 99.999

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def modelopt_available() -> bool:
    """True when NVIDIA ModelOpt's ONNX tools import (GPU build machines with the tensorrt extra)."""
    try:
        return importlib.util.find_spec("modelopt.onnx") is not None
    except (ImportError, ValueError):
        return False


def graph_summary(path_or_model) -> dict:
    """Node counts, Q/DQ counts, initializer element types and graph I/O types of an ONNX graph."""
    import onnx

    model = onnx.load(str(path_or_model), load_external_data=False) if isinstance(path_or_model, (str, Path)) \
        else path_or_model
    ops = collections.Counter(n.op_type for n in model.graph.node)
    init_types = collections.Counter(onnx.TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer)

    def io_types(values):
        return {v.name: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type) for v in values}

    return {"nodes": sum(ops.values()), "ops": dict(ops.most_common()),
            "QuantizeLinear": ops.get("QuantizeLinear", 0), "DequantizeLinear": ops.get("DequantizeLinear", 0),
            "Cast": ops.get("Cast", 0), "initializer_types": dict(init_types),
            "inputs": io_types(model.graph.input), "outputs": io_types(model.graph.output)}


def prepare_fp32(src: Path, dst: Path) -> dict:
    """The exported graph as it is, in one file (external data merged when it fits)."""
    import onnx

    from farl_edge.export.onnx_export import save_onnx

    save_onnx(onnx.load(str(src)), dst)
    return {"tool": "none (exported graph)", **graph_summary(dst)}


def prepare_fp16(src: Path, dst: Path, *, use_modelopt: bool | None = None) -> dict:
    """fp16 graph for a strongly typed build: fp16 weights and compute, fp32 I/O and sensitive ops."""
    use_modelopt = modelopt_available() if use_modelopt is None else use_modelopt
    if use_modelopt:
        return _modelopt_fp16(src, dst)
    import onnx

    from farl_edge.export.onnx_export import ORT_FP16_BLOCK, _topological_sort, onnx2fp16, save_onnx

    with quiet():
        onnx2fp16(src, dst, block=ORT_FP16_BLOCK)
    # The converter appends its I/O Casts at the end of the node list: ONNX wants topological order.
    # Its value_info keeps stale fp32 types for tensors that became fp16: drop them (re-inferred).
    model = onnx.load(str(dst))
    _topological_sort(model.graph)
    del model.graph.value_info[:]
    save_onnx(model, dst)
    return {"tool": "onnxruntime.transformers.float16 (ModelOpt not installed)", "keep_io_types": True,
            "fp32_op_types": list(ORT_FP16_BLOCK), **graph_summary(dst)}


def _modelopt_fp16(src: Path, dst: Path) -> dict:  # pragma: no cover - GPU build machines only
    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision

    from farl_edge.export.onnx_export import save_onnx

    with quiet():
        model = convert_to_mixed_precision(onnx_path=str(src), low_precision_type="fp16", keep_io_types=True,
                                           op_types_to_exclude=["LayerNormalization", "Softmax"])
    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    save_onnx(model, dst)
    return {"tool": f"modelopt.onnx.autocast {package_version('nvidia-modelopt', '?')}", "keep_io_types": True,
            "fp32_op_types": ["LayerNormalization", "Softmax"], **graph_summary(dst)}


def prepare_int8(src: Path, dst: Path, batches: Iterable[np.ndarray], input_name: str, *,
                 op_types: Sequence[str] = INT8_OP_TYPES, use_modelopt: bool | None = None,
                 workdir: Path | None = None) -> dict:
    """Explicit Q/DQ int8 graph (symmetric int8, per-channel weights) calibrated on ``batches``."""
    batches = list(batches)
    if not batches:
        raise ValueError("int8 needs calibration faces (no calibration batches)")
    use_modelopt = modelopt_available() if use_modelopt is None else use_modelopt
    if use_modelopt:
        return _modelopt_int8(src, dst, batches, input_name, op_types)
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = (workdir or dst.parent) / (Path(src).stem + ".qpre.onnx")
    with quiet():
        quant_pre_process(str(src), str(pre), skip_optimization=True, skip_symbolic_shape=True)
        # Decoders after a graph output (soft-argmax) stay float, as for the ONNX Runtime target.
        model = onnx.load(str(pre))
        ensure_node_names(model)
        onnx.save(model, str(pre))
        excluded = output_tail(model) + output_layers(model)
        quantize_static(str(pre), str(dst), FaceCalibrationReader(batches, input_name), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(op_types), per_channel=True, nodes_to_exclude=excluded,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "CalibPercentile": CALIB_PERCENTILE,
                                       # TensorRT dequantizes int8 only: int32 biases stay float
                                       "QuantizeBias": False})
    summary = graph_summary(dst)
    if not summary["QuantizeLinear"] or not summary["DequantizeLinear"]:
        raise RuntimeError(f"int8 preparation produced no Q/DQ nodes (op types {list(op_types)})")
    return {"tool": f"onnxruntime.quantization.quantize_static {package_version('onnxruntime', '?')} (ModelOpt not installed)",
            "format": "QDQ", "activations": f"int8 symmetric (percentile {CALIB_PERCENTILE})",
            "weights": "int8 symmetric per-channel", "biases": "float (not quantised)",
            "float_layers": "graph decoders after an output and the output projection",
            "op_types": list(op_types), "calibration_batches": len(batches), "excluded_nodes": excluded, **summary}


def _modelopt_int8(src, dst, batches, input_name, op_types) -> dict:  # pragma: no cover - GPU machines only
    from modelopt.onnx.quantization import quantize

    data = np.concatenate(batches)
    with quiet():
        quantize(onnx_path=str(src), quantize_mode="int8", calibration_data={input_name: data},
                 calibration_method="max", op_types_to_quantize=list(op_types), output_path=str(dst))
    summary = graph_summary(dst)
    return {"tool": f"modelopt.onnx.quantization {package_version('nvidia-modelopt', '?')}", "format": "QDQ",
            "activations": "int8 (max calibration)", "weights": "int8 per-channel", "op_types": list(op_types),
            "calibration_batches": len(batches), **summary}


def prepare(precision: str, src: Path, dst: Path, *, batches: Iterable[np.ndarray] | None = None,
            input_name: str = "image", op_types: Sequence[str] = INT8_OP_TYPES,
            use_modelopt: bool | None = None, workdir: Path | None = None) -> dict:
    """Write the graph TensorRT builds for ``precision`` to ``dst``; returns what was done."""
    if precision == "fp32":
        return prepare_fp32(src, dst)
    if precision == "fp16":
        return prepare_fp16(src, dst, use_modelopt=use_modelopt)
    if precision == "int8":
        if batches is None:
            raise ValueError("int8 needs calibration batches")
        return prepare_int8(src, dst, batches, input_name, op_types=op_types, use_modelopt=use_modelopt,
                            workdir=workdir)
    raise ValueError(f"TensorRT precisions are fp32, fp16, int8; not {precision!r}")
