"""LiteRT (TensorFlow Lite's successor, Android): PyTorch → ``model.tflite``, fp32 / fp16 / int8.

- Graph: ``litert_torch.convert`` of the registry model at the artifact's fixed batch (NCHW input
  kept: the app feeds the same (B, 3, S, S) float32 RGB in [0, 1] as every other target).
- fp16: weights stored in fp16, dequantised at load (LiteRT's float16 quantisation; the XNNPACK
  delegate then runs fp32, or fp16 where the device has it), through AI Edge Quantizer.
- int8: AI Edge Quantizer on the FULLY_CONNECTED and CONV_2D ops (the ViT's GEMMs and the head's
  convolutions: nearly all MACs): ``static`` (default) = int8 per-channel weights and int8
  activations calibrated on the calibration faces; ``dynamic`` = int8 weights, activations
  quantised per call. Transposed convolutions and batch matmuls (attention) stay float:
  ai-edge-quantizer 0.10 cannot quantise them in this graph (a transposed convolution's bias,
  BATCH_MATMUL operand types), and its whole-model ``static_wi8_ai8`` recipe writes a model the
  interpreter refuses for that reason.
- Checked here with the LiteRT interpreter (``ai_edge_litert``, XNNPACK delegate on x86); on the
  phone the same file runs through ``org.tensorflow.lite`` / LiteRT's ``CompiledModel``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from farl_edge.export.config import example_input
from farl_edge.utils import package_version, quiet

TFLITE = "model.tflite"
SIGNATURE = "serving_default"


def convert_float(model, example, path: Path) -> None:
    import litert_torch

    litert_torch.convert(model.eval(), example).export(str(path))


def signature_input(path: Path) -> str:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path)).get_signature_list()[SIGNATURE]["inputs"][0]


INT8_OPS = ("FULLY_CONNECTED", "CONV_2D")


def quantize(float_path: Path, out_path: Path, precision: str, calibration_batches=(), log=print,
             int8_mode: str = "static") -> dict:
    """fp16 weights, or int8 GEMMs / convolutions (static: calibrated on ``calibration_batches``)."""
    from ai_edge_quantizer import qtyping, quantizer, recipe

    qt = quantizer.Quantizer(str(float_path))
    info: dict = {"quantizer": f"ai-edge-quantizer {package_version('ai-edge-quantizer', '?')}"}
    if precision == "fp16":
        qt.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                  algorithm_key=recipe.AlgorithmName.FLOAT_CASTING)
        result = qt.quantize()
        info["recipe"] = "weights fp16 (float casting)"
    elif int8_mode == "dynamic":
        for op in INT8_OPS:
            qt.add_dynamic_config(regex=".*", operation_name=getattr(qtyping.TFLOperationName, op), num_bits=8)
        result = qt.quantize()
        info["recipe"] = f"dynamic int8 ({', '.join(INT8_OPS)}): int8 weights, activations quantised per call"
    else:
        for op in INT8_OPS:
            qt.add_static_config(".*", getattr(qtyping.TFLOperationName, op), 8, 8)
        name = signature_input(float_path)
        data = [{name: np.ascontiguousarray(b, np.float32)} for b in calibration_batches]
        if not data:
            raise ValueError("int8 needs calibration faces (--calib)")
        result = qt.quantize(qt.calibrate({SIGNATURE: data}, num_threads=1))
        info.update(recipe=f"static int8 ({', '.join(INT8_OPS)}): per-channel weights, calibrated activations",
                    calibration_faces=int(sum(len(d[name]) for d in data)))
        log(f"AI Edge Quantizer static int8 on {', '.join(INT8_OPS)}, calibrated on {info['calibration_faces']} faces")
    result.export_model(str(out_path), overwrite=True)
    return info


def op_counts(path: Path) -> dict[str, int]:
    """{op name: count} of the model's main subgraph (what the interpreter will run)."""
    from ai_edge_litert.interpreter import Interpreter

    ops: dict[str, int] = {}
    for op in Interpreter(model_path=str(path))._get_ops_details():  # noqa: SLF001 - the only op listing
        ops[op["op_name"]] = ops.get(op["op_name"], 0) + 1
    return ops


def build(job):
    """Builder of target ``litert`` (see farl_edge.export.formats)."""
    from farl_edge.export.formats import BuildResult

    example = example_input(job.export_cfg, "LiteRT")
    out = job.folder / TFLITE
    info = {"exporter": f"litert-torch {package_version('litert-torch', '?')}"}
    job.log(f"torch → LiteRT ({job.precision})")
    float_bytes = 0
    with quiet(stderr=True):
        if job.precision == "fp32":
            convert_float(job.model, example, out)
        else:
            float_path = Path(job.workdir) / "float.tflite"
            convert_float(job.model, example, float_path)
            float_bytes = float_path.stat().st_size
            static = job.precision == "int8" and (job.options.get("int8_mode") or "static") == "static"
            batches = (job.calibration.batches(job.cfg, job.export_cfg.batch)
                       if static and job.calibration is not None else ())
            info.update(quantize(float_path, out, job.precision, batches, job.log,
                                 int8_mode=job.options.get("int8_mode") or "static"))
        ops = op_counts(out)
    quant_ops = {k: v for k, v in ops.items() if k in ("QUANTIZE", "DEQUANTIZE")}
    if job.precision == "int8" and out.stat().st_size > 0.6 * float_bytes:
        raise RuntimeError("the int8 model is not smaller than its float source: nothing was quantised")
    info.update(model_bytes=out.stat().st_size, ops=ops)
    job.log(f"model.tflite {out.stat().st_size / 1e6:.1f} MB, {sum(ops.values())} ops {quant_ops or ''}")
    return BuildResult(model_file=TFLITE, info=info, checks={"ops": sum(ops.values()), **quant_ops})
