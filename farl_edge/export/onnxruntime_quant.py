"""ONNX Runtime INT8: static QDQ (per-channel weights, calibrated on real face crops) or dynamic.

Measured on the trained farl-small-300w (16 calibration faces, NME_io on 16 test-helen faces,
fp32 4.150):

- quantising the landmark decoder (soft-argmax: ``heatmaps / sum @ grid``, two MatMuls after the
  ``heatmaps`` output) wrecks it: 5.899 with MatMul/Conv, 5.970 with MatMul only — uint8
  activations cannot hold the ~1e-4 per-pixel weights. Everything downstream of a graph output
  (:func:`output_tail`) is therefore never quantised: 4.136 (MatMul/Conv/ConvTranspose);
- all op types (Q/DQ around Add, Mul, Softmax, LayerNorm, Resize ...): 4.221 — worse, as on
  ViT-B; GEMM-like ops only are the default (``ExportConfig.int8_op_types``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from farl_edge.export.config import INT8_OP_TYPES
from farl_edge.utils import quiet


class FaceCalibrationReader:
    """onnxruntime CalibrationDataReader over prepared face-crop batches."""

    def __init__(self, batches: Iterable[np.ndarray], input_name: str):
        self._batches = [np.ascontiguousarray(b, np.float32) for b in batches]
        self._iter = iter(self._batches)
        self.input_name = input_name

    def get_next(self):
        batch = next(self._iter, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._iter = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


def count_qdq(path_or_model) -> dict:
    import onnx

    model = onnx.load(str(path_or_model), load_external_data=False) if isinstance(path_or_model, (str, Path)) \
        else path_or_model
    ops = [n.op_type for n in model.graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear"),
            "integer_ops": sum(o in ("MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv",
                                     "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLinear") for o in ops)}


def output_tail(model) -> list[str]:
    """Names of the nodes downstream of a graph output (decoders such as soft-argmax that turn
    one output into another): they stay in float."""
    reach = {o.name for o in model.graph.output}
    tail = []
    for node in model.graph.node:  # topological order
        if any(i in reach for i in node.input):
            reach.update(node.output)
            tail.append(node.name)
    return tail


GEMM_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def output_layers(model) -> list[str]:
    """Names of the last GEMM-like nodes before each graph output (the output projection, e.g. the
    heatmap / logits convolution). Kept in float for int8: it is tiny, and quantising it moved the
    edge alignment heatmaps' worst-face cosine from 0.9992 to 0.9984 (below the 0.999 gate)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found, seen = [], set()
    stack = [o.name for o in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in GEMM_OP_TYPES:
            found.append(node.name)
        else:
            stack.extend(node.input)
    return sorted(found)


def ensure_node_names(model) -> None:
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


def quantize_static_qdq(src: Path, dst: Path, batches: Iterable[np.ndarray], input_name: str,
                        op_types: Sequence[str] | None = INT8_OP_TYPES, per_channel: bool = True,
                        workdir: Path | None = None) -> dict:
    """Static INT8, QDQ format: uint8 asymmetric activations, int8 symmetric per-channel weights."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = FaceCalibrationReader(batches, input_name)
    if not len(reader):
        raise ValueError("no calibration batches")
    import onnx

    from farl_edge.export.onnx_export import save_onnx

    workdir = workdir or dst.parent
    single = workdir / (src.stem + ".single.onnx")
    save_onnx(onnx.load(str(src)), single)  # quant_pre_process cannot follow external data
    pre = workdir / (src.stem + ".preprocessed.onnx")
    with quiet():
        quant_pre_process(str(single), str(pre), skip_optimization=False, skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        ensure_node_names(model)
        onnx.save(model, str(pre))
        excluded = output_tail(model)
        quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ, nodes_to_exclude=excluded,
                        op_types_to_quantize=list(op_types) if op_types else None, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    return {"mode": "static", "format": "QDQ", "op_types": list(op_types) if op_types else "all",
            "per_channel": per_channel, "activations": "uint8 asymmetric (MinMax)", "weights": "int8 symmetric",
            "calibration_batches": len(reader), "excluded_nodes": excluded, **count_qdq(dst)}


def quantize_dynamic_int8(src: Path, dst: Path, op_types: Sequence[str] = ("MatMul", "Attention")) -> dict:
    """Dynamic INT8: int8 weights, activations quantised per call (no calibration)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    ensure_node_names(model)
    staged = dst.with_name(dst.stem + ".named.onnx")
    onnx.save(model, str(staged))
    excluded = output_tail(model)
    with quiet():
        quantize_dynamic(str(staged), str(dst), op_types_to_quantize=list(op_types), per_channel=False,
                         weight_type=QuantType.QInt8, nodes_to_exclude=excluded)
    staged.unlink()
    return {"mode": "dynamic", "op_types": list(op_types), "weights": "int8", "excluded_nodes": excluded,
            **count_qdq(dst)}
