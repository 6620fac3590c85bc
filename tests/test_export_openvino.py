"""OpenVINO target: fp32 / fp16 / int8 exports pass validation; the IR of an int8 export holds
FakeQuantize / FakeConvert nodes; the manifest records the inference precision."""
from __future__ import annotations

import pytest

from export_fixtures import ALIGN, PARSE, assert_artifact_ok, export_args, reuse_torch_export, run_export  # noqa: F401
from farl_edge.cli import main

pytestmark = pytest.mark.usefixtures("reuse_torch_export")

ov = pytest.importorskip("openvino")


def _ir_ops(path):
    model = ov.Core().read_model(str(path / "model.xml"))
    return [op.get_type_name() for op in model.get_ops()], model


def test_openvino_fp32_alignment(tmp_path):
    out = tmp_path / "ov-fp32"
    assert main(export_args(ALIGN, "openvino", "fp32", out)) == 0
    m = assert_artifact_ok(out, "openvino", "fp32")
    assert set(m["files"]) == {"model.xml", "model.bin"}
    assert m["backend"] == "openvino" and m["runtime"]["options"]["inference_precision"] == "f32"
    assert m["build"]["device_default_inference_precision"] in ("f32", "bf16", "f16")
    assert m["runtime"]["session"]["inference_precision_used"] == "f32"
    assert m["validation"]["tolerance_set"] == "fp32"
    ops, model = _ir_ops(out)
    assert "FakeQuantize" not in ops
    assert [o.get_any_name() for o in model.outputs] == ["landmarks", "heatmaps"]


def test_openvino_fp16_parsing(tmp_path):
    out = tmp_path / "ov-fp16"
    assert main(export_args(PARSE, "openvino", "fp16", out)) == 0
    m = assert_artifact_ok(out, "openvino", "fp16")
    _, model = _ir_ops(out)
    const_types = {str(op.get_output_element_type(0)) for op in model.get_ops() if op.get_type_name() == "Constant"}
    assert any("f16" in t or "float16" in t for t in const_types), const_types
    assert m["files"]["model.bin"]["bytes"] < 12_000_000  # ~18 MB of fp32 weights, halved


@pytest.mark.slow
@pytest.mark.parametrize("name", [ALIGN, PARSE])
def test_openvino_int8_has_fake_quantize(tmp_path, name):
    out = tmp_path / "ov-int8"
    run_export(name, "openvino", "int8", out)
    m = assert_artifact_ok(out, "openvino", "int8")
    ops, _ = _ir_ops(out)
    assert ops.count("FakeQuantize") + ops.count("FakeConvert") >= 20
    q = m["build"]["quantization"]
    assert q["tool"] == "nncf" and q["model_type"] == "TRANSFORMER"
    assert m["calibration"]["count"] == 16
    assert m["build"]["inference_precision"] in ("f32", "bf16", "f16")


@pytest.mark.slow
def test_recipe_intel_cpu_bf16(tmp_path):
    """The bf16 recipe: fp32 IR, run (and validated) with the bf16 inference-precision hint."""
    out = tmp_path / "ov-bf16"
    assert main(export_args(ALIGN, "openvino", "fp32", out, "--recipe", "export/intel-cpu-bf16")) == 0
    m = assert_artifact_ok(out, "openvino", "fp32")
    assert m["runtime"]["options"]["inference_precision"] == "bf16"
    assert m["validation"]["tolerance_set"] == "bf16"
    assert m["recipe"]["name"] == "export/intel-cpu-bf16"


@pytest.mark.slow
def test_openvino_int8_accuracy_control(tmp_path):
    """--max-drop: nncf.quantize_with_accuracy_control with the task metric (NME_io here)."""
    out = tmp_path / "ov-int8-ac"
    run_export(ALIGN, "openvino", "int8", out, max_drop=0.5)
    m = assert_artifact_ok(out, "openvino", "int8")
    ac = m["build"]["quantization"]["accuracy_control"]
    assert ac == {"metric": "nme_io", "max_drop": 0.5, "faces": 16}


def test_int8_op_types_map_to_nncf_ignored_types():
    from farl_edge.export.openvino_export import ignored_op_types

    assert ignored_op_types(None) == [] and ignored_op_types(["all"]) == []
    assert ignored_op_types(["MatMul"]) == ["Convolution", "GroupConvolution", "ConvolutionBackpropData",
                                            "GroupConvolutionBackpropData"]
    assert ignored_op_types(["MatMul", "Conv"]) == ["ConvolutionBackpropData", "GroupConvolutionBackpropData"]
    with pytest.raises(ValueError, match="openvino --int8-ops takes"):
        ignored_op_types(["Gemm"])


@pytest.mark.slow
def test_openvino_int8_matmul_only(tmp_path):
    """--int8-ops MatMul: the transformer's matmuls in int8, every convolution left in float."""
    out = tmp_path / "ov-int8-mm"
    run_export(PARSE, "openvino", "int8", out, int8_op_types=["MatMul"])
    m = assert_artifact_ok(out, "openvino", "int8")
    assert "Convolution" in m["build"]["quantization"]["float_op_types"]
    model = ov.Core().read_model(str(out / "model.xml"))
    quantized_convs = [op for op in model.get_ops() if op.get_type_name() in ("Convolution", "ConvolutionBackpropData")
                       and any(v.get_node().get_type_name() == "FakeQuantize" for v in op.input_values())]
    quantized_matmuls = [op for op in model.get_ops() if op.get_type_name() == "MatMul"
                         and any(v.get_node().get_type_name() == "FakeQuantize" for v in op.input_values())]
    assert quantized_convs == [] and len(quantized_matmuls) >= 12



def _activation_fq_symmetric(model) -> list[bool]:
    """For each FakeQuantize on an activation (its data input is not a constant): is its range
    symmetric (signed: low = -high·128/127, or unsigned from 0)?"""
    import numpy as np

    out = []
    for op in model.get_ops():
        if op.get_type_name() != "FakeQuantize" or op.input_value(0).get_node().get_type_name() == "Constant":
            continue
        low, high = (np.asarray(op.input_value(i).get_node().get_data(), dtype=np.float64) for i in (1, 2))
        signed = np.allclose(low, -high * 128 / 127, rtol=1e-3, atol=1e-6)
        out.append(bool(signed or np.allclose(low, 0.0)))
    return out


@pytest.mark.parametrize("preset, all_symmetric", [("performance", True), ("mixed", False)])
def test_nncf_preset_sets_activation_symmetry(preset, all_symmetric):
    """nncf_preset=performance makes every activation quantiser symmetric; the default (mixed) keeps
    asymmetric ones (shifted activations such as GELU outputs); the manifest field names the preset."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from farl_edge.export.openvino_export import quantize_nncf

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.GELU(), torch.nn.Conv2d(16, 16, 3), torch.nn.GELU(),
                              torch.nn.Flatten(), torch.nn.Linear(16 * 12 * 12, 32), torch.nn.Linear(32, 8)).eval()
    ov_model = ov.convert_model(net, example_input=torch.zeros(1, 3, 16, 16))
    rng = np.random.default_rng(0)
    data = [rng.normal(0.5, 1.0, (1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    calibration = SimpleNamespace(batches=lambda cfg, batch: iter(data))
    q, info = quantize_nncf(ov_model, calibration, None, SimpleNamespace(batch=1), preset=preset)
    assert info["preset"] == preset.upper()
    symmetric = _activation_fq_symmetric(q)
    assert len(symmetric) >= 2 and all(symmetric) == all_symmetric


def test_nncf_preset_rejects_unknown():
    from types import SimpleNamespace

    from farl_edge.export.openvino_export import quantize_nncf

    with pytest.raises(ValueError, match="nncf_preset must be one of mixed, performance"):
        quantize_nncf(None, SimpleNamespace(), None, SimpleNamespace(batch=1), preset="fast")
