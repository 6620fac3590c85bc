"""Measured floor: op shapes from a forward, single-op throughput, and the floor arithmetic."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from farl_edge.bench.floor import (KERNEL_PRECISION, OpShape, ThroughputCache, chain_length, collect_op_shapes,
                                   measure_throughput, measured_floor, timed_graph)


class Tiny(nn.Module):
    """One linear layer on 5 tokens, one attention product, one 3×3 conv: shapes known by hand."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1)

    def forward(self, x):  # x: (1, 3, 6, 6)
        y = self.conv(x)                              # conv: 1·4·6·6·3·3·3 MACs
        y = self.up(y)                                # transposed conv: 1·4·6·6 inputs × 2·4·4 MACs
        t = torch.rand(1, 5, 8)
        h = self.fc(t)                                # gemm: 5×8×16
        attn = h @ h.transpose(1, 2)                  # attention: 1×5×16×5
        return y.sum() + attn.sum()


def test_collect_op_shapes_of_a_tiny_model():
    counts = collect_op_shapes(Tiny(), 6)
    by_class = {(s.op_class, s.transposed): (s, n) for s, n in counts.items()}
    assert set(by_class) == {("gemm", False), ("attention", False), ("conv", False), ("conv", True)}
    assert by_class["gemm", False][0].dims == (5, 8, 16) and by_class["gemm", False][0].macs == 5 * 8 * 16
    assert by_class["attention", False][0].macs == 1 * 5 * 16 * 5
    assert by_class["conv", False][0].macs == 1 * 4 * 6 * 6 * 3 * 3 * 3
    up = by_class["conv", True][0]
    assert up.dims == (1, 4, 6, 6, 2, 4, 4, 2, 2, 1, 1, 1, 1)
    assert up.macs == 1 * 4 * 6 * 6 * 2 * 4 * 4  # = output 12×12×2 × Cin 4 × (4/2)² taps per output
    assert all(n == 1 for _, n in by_class.values())


def test_floor_arithmetic_with_stubbed_throughput():
    counts = {OpShape("gemm", (100, 100, 100)): 3, OpShape("conv", (1, 10, 10, 10, 20, 3, 3, 1, 1, 1, 1, 1)): 2}
    rates = {"gemm": 2.0, "conv": 0.5}  # TMAC/s
    f = measured_floor(counts, "int8", lambda shape, prec: rates[shape.op_class])
    gemm_ms = 3 * 1e6 / 2e12 * 1e3
    conv_ms = 2 * (20 * 10 * 10 * 10 * 9) / 0.5e12 * 1e3
    assert f.precision == "int8"
    assert f.per_class_ms == pytest.approx({"gemm": gemm_ms, "conv": conv_ms})
    assert f.ms == pytest.approx(gemm_ms + conv_ms)
    assert f.kernel_throughput == pytest.approx(rates)
    d = f.to_dict()
    assert set(d) == {"precision", "ms", "per_class_ms", "kernel_throughput", "shapes"} and len(d["shapes"]) == 2
    with pytest.raises(ValueError, match="positive"):
        measured_floor(counts, "fp32", lambda s, p: 0.0)


def test_row_precisions_map_to_kernel_precisions():
    seen = []
    measured_floor({OpShape("gemm", (2, 2, 2)): 1}, "fp16", lambda s, p: seen.append(p) or 1.0)
    assert seen == ["f32"] and KERNEL_PRECISION["bf16"] == "bf16" and KERNEL_PRECISION["int8"] == "int8"


def test_int8_floor_takes_the_faster_of_int8_and_bf16_kernels():
    """A transposed conv whose int8 kernel is slower than its bf16 one: the int8 row's floor uses bf16."""
    gemm, deconv = OpShape("gemm", (10, 10, 10)), OpShape("conv", (1, 4, 4, 4, 4, 2, 2, 2, 2, 0, 0, 1, 1))
    rates = {("gemm", "int8"): 2.0, ("gemm", "bf16"): 1.0, ("conv", "int8"): 0.1, ("conv", "bf16"): 0.5}
    f = measured_floor({gemm: 1, deconv: 1}, "int8", lambda s, p: rates[s.op_class, p])
    by_class = {row["op_class"]: row for row in f.shapes}
    assert by_class["gemm"]["kernel"] == "int8" and by_class["gemm"]["tmacs"] == 2.0
    assert by_class["conv"]["kernel"] == "bf16" and by_class["conv"]["tmacs"] == 0.5
    assert f.ms == pytest.approx((gemm.macs / 2.0 + deconv.macs / 0.5) / 1e12 * 1e3)


def test_throughput_cache_measures_each_shape_once():
    calls = []
    cache = ThroughputCache(2, measure=lambda s, p, t: calls.append((s, p, t)) or 1.0)
    s = OpShape("gemm", (4, 4, 4))
    assert cache(s, "int8") == cache(s, "int8") == 1.0
    cache(s, "bf16")
    assert calls == [(s, "int8", 2), (s, "bf16", 2)]


@pytest.mark.parametrize("shape", [OpShape("gemm", (64, 64, 64)), OpShape("attention", (2, 16, 8, 16)),
                                   OpShape("conv", (1, 8, 16, 16, 8, 3, 3, 1, 1, 1, 1, 1)),
                                   OpShape("conv", (1, 8, 8, 8, 4, 4, 4, 2, 2, 1, 1, 1, 1))],
                         ids=["gemm", "attention", "conv", "transposed"])
def test_single_op_graphs_run_at_each_precision(shape):
    """Real OpenVINO single-op graphs (small shapes, fast): positive, finite throughput."""
    for precision in ("f32", "bf16", "int8"):
        tmacs = measure_throughput(shape, precision, threads=1, min_time_s=0.02, max_iters=10)
        assert 0 < tmacs < 100, (precision, tmacs)


@pytest.mark.parametrize("shape, op_type, chained", [
    (OpShape("gemm", (197, 384, 1536)), "MatMul", True),
    (OpShape("attention", (3, 197, 64, 197)), "ScaledDotProductAttention", True),
    (OpShape("attention", (3, 197, 197, 64)), "ScaledDotProductAttention", True),
    (OpShape("attention", (2, 10, 8, 6)), "MatMul", True),
    (OpShape("conv", (1, 16, 14, 14, 16, 3, 3, 1, 1, 1, 1, 1)), "Convolution", True),
    (OpShape("conv", (1, 16, 14, 14, 8, 3, 3, 1, 1, 1, 1, 1)), "Convolution", False),
    (OpShape("conv", (1, 8, 14, 14, 8, 3, 3, 1, 1, 1, 1, 8)), "GroupConvolution", True),
    (OpShape("conv", (1, 3, 224, 224, 384, 16, 16, 16, 16, 0, 0, 1)), "Convolution", False),
    (OpShape("conv", (1, 64, 28, 28, 32, 4, 4, 2, 2, 1, 1, 1, 1)), "ConvolutionBackpropData", False),
], ids=["gemm", "attention-qk", "attention-v", "bmm", "conv3x3", "conv3x3-16to8", "depthwise", "patch-embed", "transposed"])
def test_timed_graph_repeats_the_shape_as_a_chain(shape, op_type, chained):
    """The timed graph runs exactly ``n`` ops of the shape's MACs; chains feed each op into the next
    and end in the input's shape (each op followed by its return), strided convolutions run as copies."""
    model, n = timed_graph(shape, "int8")
    ops = [op for op in model.get_ordered_ops() if op.get_type_name() == op_type]
    per_node = 2 if op_type == "ScaledDotProductAttention" else 1  # q·kᵀ and ·v in one node
    assert len(ops) * per_node == n >= 1
    assert len([op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]) == 2 * len(ops)
    if chained:
        assert n == chain_length(shape) and n % 2 == 0
        assert len(model.outputs) == 1
        assert tuple(model.outputs[0].get_shape()) == tuple(model.inputs[0].get_shape())
        for a, b in zip(ops, ops[1:]):  # each op's output is the next op's (quantised) input
            assert b.input_value(0).get_node().input_value(0).get_node() is a
    else:
        assert len(model.outputs) == n
        if shape.transposed:  # a stride-2 transposed conv doubles the input's size
            assert tuple(model.outputs[0].get_shape())[2:] == tuple(2 * d for d in shape.dims[2:4])
    float_model, m = timed_graph(shape, "f32")
    assert m == n and not [op for op in float_model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]


def test_chain_length_hides_the_call_cost_of_small_shapes():
    assert chain_length(OpShape("gemm", (197, 384, 384))) >= 14        # 29 MMACs: a long chain
    assert chain_length(OpShape("gemm", (785, 768, 3072))) == 2        # 1.85 GMACs: the op and its return
    assert chain_length(OpShape("gemm", (4, 4, 4))) == 32              # capped


def test_profile_classes_fused_attention_and_linear_matmuls():
    """benchmarks/openvino_profile.py: a fused attention Subgraph counts as attention, a MatMul with a
    (quantised) weight operand is a linear layer, deconvolutions and quantised FCs get their class."""
    import importlib.util
    from pathlib import Path

    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    spec = importlib.util.spec_from_file_location(
        "openvino_profile", Path(__file__).resolve().parents[1] / "benchmarks" / "openvino_profile.py")
    prof = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prof)

    def c(v):
        return ops.constant(np.array(v, np.float32))

    x = ops.parameter([1, 2, 5, 4], ov.Type.f32, name="x")
    w = ops.fake_quantize(ops.constant(np.ones((4, 4), np.float32)), c(-1), c(1), c(-1), c(1), 255)
    lin = ops.matmul(x, w, False, True, name="linear")
    scores = ops.matmul(lin, x, False, True, name="scores")
    sdpa = ops.scaled_dot_product_attention(lin, x, x, causal=False, name="sdpa")
    names = prof.attention_node_names(ov.Model([scores, sdpa], [x]))
    assert names == {"scores", "sdpa"}
    assert prof.op_class_of("Subgraph", {"FakeQuantize_12", "sdpa"}, names) == "attention"  # fused, renamed
    assert prof.op_class_of("Subgraph", {"add_12"}, names) == "other"
    assert prof.op_class_of("FullyConnectedQuantizedLegacy", {"linear"}, names) == "gemm"
    assert prof.op_class_of("ConvolutionBackpropData", {"up"}, names) == "conv"


def test_fused_original_names_map_runtime_nodes_to_the_ir():
    """A chain of attention units fuses into Subgraphs named after FakeQuantize nodes; the map still
    finds every timed attention node among what the runtime nodes execute."""
    import openvino as ov

    from farl_edge.bench.floor import TIMED, fused_original_names

    model, n = timed_graph(OpShape("attention", (2, 16, 8, 16)), "int8")
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1})
    names = fused_original_names(compiled)
    timed = {o for originals in names.values() for o in originals if o.startswith(TIMED)}
    assert timed == {f"{TIMED}{i}" for i in range(n // 2)}


def test_torch_compile_profile_kinds():
    """benchmarks/torch_compile_profile.py groups profiler events by who computes them."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "torch_compile_profile", Path(__file__).resolve().parents[1] / "benchmarks" / "torch_compile_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.kind_of("onednn::qlinear_pointwise") == "int8 gemm/conv (oneDNN)"
    assert mod.kind_of("onednn::qconv_pointwise") == "int8 gemm/conv (oneDNN)"
    assert mod.kind_of("mkl::_mkl_linear") == "float gemm/conv (oneDNN/MKL)"
    assert mod.kind_of("mkldnn::_convolution_transpose_pointwise") == "float gemm/conv (oneDNN/MKL)"
    assert mod.kind_of("aten::bmm") == "attention matmul"
    assert mod.kind_of("cpp_fused_add_native_layer_norm_12").startswith("inductor fused kernels")
    assert mod.kind_of("## Call CompiledFxGraph fxyz ##").startswith("graph call")
    assert mod.kind_of("aten::empty") == "other"
