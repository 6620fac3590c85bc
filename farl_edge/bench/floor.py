"""Measured floor: the time a model would take if every GEMM / attention matmul / convolution ran
as fast as this CPU's kernels run that same shape alone.

1. ``collect_op_shapes``: one forward under a dispatch mode records every matrix op with its
   shape: ``gemm`` (``mm``/``addmm``: the ViT's qkv / proj / fc1 / fc2, 1×1 work), ``attention``
   (``bmm``: q·kᵀ and attention·v), ``conv`` (``convolution``, transposed ones included: the head).
2. ``measure_throughput``: each distinct shape as an OpenVINO graph of 2–32 ops of that shape, each
   feeding the next (so a call's fixed cost is not charged to a few MMACs), at the row's
   precision (int8: FakeQuantize on both operands, which the CPU plugin runs in its int8 kernels;
   bf16 / f32: the inference-precision hint), timed after warm-up; TMAC/s = MACs / median time.
3. ``measured_floor_ms`` = Σ over shapes of calls × MACs ÷ that shape's throughput (an int8 row:
   the faster of the shape's int8 and bf16 kernels, as a mixed int8 model may run either);
   ``x_measured_floor`` = median_ms ÷ measured_floor_ms (1.0 = the model runs as fast as its own
   ops do alone; the nominal ``floor_ms`` uses the ISA's peak instead).

Ops outside the three classes (LayerNorm, softmax, GELU, resizes, ...) add no floor time: the
floor says what the arithmetic costs at the speed the kernels reach.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

OP_CLASSES = ("gemm", "attention", "conv")
# Row precision → precision the single-op graphs run at (fp16 IRs run on the CPU's f32/bf16 path).
KERNEL_PRECISION = {"fp32": "f32", "fp16": "f32", "bf16": "bf16", "int8": "int8"}
# Kernels an op of a row may run on: an int8 model runs what it does not quantise (or what runs
# faster so: OpenVINO keeps transposed convolutions in bf16) in bf16, so its floor takes the faster.
KERNEL_CANDIDATES = {"f32": ("f32",), "bf16": ("bf16",), "int8": ("int8", "bf16")}


@dataclass(frozen=True)
class OpShape:
    op_class: str
    # gemm (M, K, N); attention (B, M, K, N);
    # conv (N, Cin, H, W, Cout, kh, kw, sh, sw, ph, pw, groups[, transposed]) with H, W the input's
    dims: tuple

    @property
    def transposed(self) -> bool:
        return self.op_class == "conv" and len(self.dims) > 12 and bool(self.dims[12])

    @property
    def macs(self) -> float:
        d = self.dims
        if self.op_class == "gemm":
            return float(d[0] * d[1] * d[2])
        if self.op_class == "attention":
            return float(d[0] * d[1] * d[2] * d[3])
        n, cin, h, w, cout, kh, kw, sh, sw, ph, pw, g = d[:12]
        if self.transposed:  # every input pixel scatters into kh × kw × Cout/g outputs
            return float(n * cin * h * w * (cout // g) * kh * kw)
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        return float(n * cout * ho * wo * (cin // g) * kh * kw)


def collect_op_shapes(model, input_size: int, batch: int = 1) -> dict[OpShape, int]:
    """{shape: calls per forward} of the matrix ops in one forward of ``model``."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    counts: dict[OpShape, int] = {}

    def add(shape: OpShape) -> None:
        counts[shape] = counts.get(shape, 0) + 1

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            packet = getattr(func, "overloadpacket", None)
            if packet in (aten.mm, aten.addmm):
                a, b = (args[0], args[1]) if packet is aten.mm else (args[1], args[2])
                add(OpShape("gemm", (int(a.shape[0]), int(a.shape[1]), int(b.shape[1]))))
            elif packet in (aten.bmm, aten.baddbmm):
                a, b = (args[0], args[1]) if packet is aten.bmm else (args[1], args[2])
                add(OpShape("attention", (int(a.shape[0]), int(a.shape[1]), int(a.shape[2]), int(b.shape[2]))))
            elif packet is aten.convolution:
                x, w = args[0], args[1]
                stride, padding, transposed, groups = args[3], args[4], bool(args[6]), int(args[8])
                # weight (Cout, Cin/g, kh, kw); transposed: (Cin, Cout/g, kh, kw)
                cout = int(w.shape[1]) * groups if transposed else int(w.shape[0])
                add(OpShape("conv", (int(x.shape[0]), int(x.shape[1]), int(x.shape[2]), int(x.shape[3]),
                                     cout, int(w.shape[2]), int(w.shape[3]), int(stride[0]), int(stride[1]),
                                     int(padding[0]), int(padding[1]), groups, int(transposed))))
            return func(*args, **kwargs)

    x = torch.rand(batch, 3, input_size, input_size)
    was_training = model.training
    model.eval()
    with torch.no_grad(), Recorder():
        model(x)
    model.train(was_training)
    return counts


# Each shape is timed inside a chain of ops of its own shape and class, every op feeding the next
# (a GEMM alternates (M,K,N) and its return (M,N,K), which costs the same MACs, as a ViT's fc1 and
# fc2 do; a convolution chains only when it keeps its channel count), as in the model: a
# call's fixed cost is shared by the chain, and no op's output is copied back to the caller.
# Independent copies of one op (the earlier scheme) charged each copy a quantise of the shared input
# and an output copy, and read 2× slower than the model's own ops on 224-pixel shapes. Ops that
# cannot chain (strided, transposed or channel-changing convolutions) run as independent copies.
MIN_GRAPH_MACS = 400e6
MAX_OPS = 32


def chainable(shape: OpShape) -> bool:
    if shape.op_class != "conv":
        return True
    _, cin, h, w_, cout, kh, kw, sh, sw, ph, pw, g = shape.dims[:12]
    # a conv chains only into itself: Cin→Cout→Cin would time a second, differently shaped conv
    same = not shape.transposed and sh == sw == 1 and 2 * ph == kh - 1 and 2 * pw == kw - 1
    return same and cin == cout


def self_attention_dims(shape: OpShape) -> tuple[int, int, int] | None:
    """(heads, tokens, head_dim) when ``shape`` is q·kᵀ (B, T, D, T) or attention·v (B, T, T, D)."""
    b, m, k, n = shape.dims
    if n == m:
        return b, m, k
    if k == m:
        return b, m, n
    return None


def _ops_per_graph(shape: OpShape, at_least: int) -> int:
    """Enough ops of ``shape`` for MIN_GRAPH_MACS (a call's fixed cost hidden), within [at_least, MAX_OPS]."""
    return int(min(MAX_OPS, max(at_least, -(-MIN_GRAPH_MACS // shape.macs))))


def chain_length(shape: OpShape) -> int:
    """Ops in the timed chain: even (each op and its return), ≥ 2."""
    n = _ops_per_graph(shape, 2)
    return n + n % 2


def copies_for(shape: OpShape) -> int:
    return _ops_per_graph(shape, 1)


def _quantizer(precision: str):
    import numpy as np
    import openvino.opset13 as ops

    def c(v):
        return ops.constant(np.array(v, np.float32))

    def fq(node, weights: bool = False, signed: bool = False):
        """What NNCF writes and the CPU plugin's low-precision pass turns into int8 kernels:
        u8 activations (256 levels, zero point 0), i8 where they are signed (attention's q and k),
        symmetric i8 weights (255 levels)."""
        if precision != "int8":
            return node
        if weights:
            return ops.fake_quantize(node, c(-1.27), c(1.27), c(-1.27), c(1.27), 255)
        if signed:
            return ops.fake_quantize(node, c(-1.28), c(1.27), c(-1.28), c(1.27), 256)
        return ops.fake_quantize(node, c(0.0), c(2.55), c(0.0), c(2.55), 256)

    return fq


def _weights(rng, shape: tuple, fan_in: int):
    """Variance-preserving uniform weights, so a float chain neither overflows nor turns denormal."""
    import numpy as np

    return (rng.uniform(-1, 1, shape) * np.sqrt(3.0 / fan_in)).astype(np.float32)


TIMED = "timed_op_"  # friendly-name prefix of the ops whose kernel time is the measurement


def fused_original_names(compiled) -> dict[str, set[str]]:
    """{runtime node name: names of the IR nodes it executes}: the CPU plugin fuses nodes (a
    FakeQuantize into an attention kernel, a bias into a convolution) and names the result after
    any one of them, so the profile's node name alone does not say what a node runs."""
    out = {}
    for op in compiled.get_runtime_model().get_ops():
        names = op.get_rt_info()["originalLayersNames"].astype(str)
        out[op.get_friendly_name()] = {n for n in names.split(",") if n}
    return out


def _conv(rng, fq, x, cin: int, cout: int, shape: OpShape):
    """One (group / transposed) convolution of ``shape``'s kernel, stride, padding and groups from
    ``cin`` to ``cout`` channels, with fresh weights."""
    import openvino.opset13 as ops

    kh, kw, sh, sw, ph, pw, g = shape.dims[5:12]
    pads = dict(pads_begin=[ph, pw], pads_end=[ph, pw], dilations=[1, 1])
    if shape.transposed:  # torch's output_padding is left out: it changes only the border
        if g == 1:
            wt = _weights(rng, (cin, cout, kh, kw), cin * kh * kw)
            return ops.convolution_backprop_data(fq(x), fq(ops.constant(wt), weights=True), [sh, sw], **pads)
        wt = _weights(rng, (g, cin // g, cout // g, kh, kw), cin // g * kh * kw)
        return ops.group_convolution_backprop_data(fq(x), fq(ops.constant(wt), weights=True), [sh, sw], **pads)
    if g == 1:
        wt = _weights(rng, (cout, cin, kh, kw), cin * kh * kw)
        return ops.convolution(fq(x), fq(ops.constant(wt), weights=True), [sh, sw], **pads)
    wt = _weights(rng, (g, cout // g, cin // g, kh, kw), cin // g * kh * kw)
    return ops.group_convolution(fq(x), fq(ops.constant(wt), weights=True), [sh, sw], **pads)


def _timed(node, i: int):
    node.set_friendly_name(f"{TIMED}{i}")
    return node


def _chain_model(shape: OpShape, precision: str, length: int):
    """An OpenVINO model of ``length`` ops of ``shape``, each feeding the next (weights constant
    where the model's are, attention's second operand a graph input as in the model)."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    rng, fq, d = np.random.default_rng(0), _quantizer(precision), shape.dims
    params = []
    if shape.op_class == "gemm":
        m, k, n = d
        h = x = ops.parameter([m, k], ov.Type.f32, name="x")
        params.append(x)
        for i in range(length):
            a, b = (k, n) if i % 2 == 0 else (n, k)
            h = _timed(ops.matmul(fq(h), fq(ops.constant(_weights(rng, (b, a), a)), weights=True), False, True), i)
    elif shape.op_class == "attention" and (self_attn := self_attention_dims(shape)):
        # The model's q·kᵀ → softmax → ·v becomes one ScaledDotProductAttention (the ONNX frontend
        # fuses it), which the CPU plugin runs as one kernel: time that, each unit's output the next
        # one's query; a unit is two ops of this shape's MACs. int8: NNCF's signed FakeQuantize on
        # q and k (v stays float, as NNCF leaves it).
        heads, tokens, head_dim = self_attn
        h = x = ops.parameter([1, heads, tokens, head_dim], ov.Type.f32, name="q")
        params.append(x)
        for i in range(length // 2):
            k = ops.parameter([1, heads, tokens, head_dim], ov.Type.f32, name=f"k{i}")
            v = ops.parameter([1, heads, tokens, head_dim], ov.Type.f32, name=f"v{i}")
            params += [k, v]
            h = _timed(ops.scaled_dot_product_attention(fq(h, signed=True), fq(k, signed=True), v, causal=False), i)
    elif shape.op_class == "attention":  # a batched product that is not self-attention: a plain chain
        bsz, m, k, n = d
        h = x = ops.parameter([bsz, m, k], ov.Type.f32, name="x")
        params.append(x)
        for i in range(length):
            a, b = (k, n) if i % 2 == 0 else (n, k)
            y = ops.parameter([bsz, a, b], ov.Type.f32, name=f"y{i}")
            params.append(y)
            h = _timed(ops.matmul(fq(h), fq(y), False, False), i)
    else:  # a stride-1 "same" conv that keeps its channels (chainable)
        nb, cin, hh, ww = d[:4]
        h = x = ops.parameter([nb, cin, hh, ww], ov.Type.f32, name="x")
        params.append(x)
        for i in range(length):
            h = _timed(_conv(rng, fq, h, cin, cin, shape), i)
    return ov.Model([h], params, f"{shape.op_class}-{'x'.join(map(str, d))}-chain{length}")


def _copies_model(shape: OpShape, precision: str, copies: int):
    """``copies`` independent convolutions of ``shape`` on one input (each its own weights, so
    nothing is shared or folded): for the convolutions a chain cannot repeat (strided, transposed,
    channel-changing)."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    rng, fq = np.random.default_rng(0), _quantizer(precision)
    nb, cin, h, w_, cout = shape.dims[:5]
    x = ops.parameter([nb, cin, h, w_], ov.Type.f32, name="x")
    outs = [_timed(_conv(rng, fq, x, cin, cout, shape), i) for i in range(copies)]
    return ov.Model(outs, [x], f"conv-{'x'.join(map(str, shape.dims))}-x{copies}")


def timed_graph(shape: OpShape, precision: str):
    """(OpenVINO model, how many ops of ``shape`` one call of it runs)."""
    if chainable(shape):
        n = chain_length(shape)
        return _chain_model(shape, precision, n), n
    n = copies_for(shape)
    return _copies_model(shape, precision, n), n


def measure_throughput(shape: OpShape, precision: str, threads: int, *, min_time_s: float = 0.3,
                       max_iters: int = 200) -> float:
    """TMAC/s the OpenVINO CPU kernels reach on ``shape`` at ``precision`` (f32 / bf16 / int8): MACs over
    the timed ops' own node time (PERF_COUNT), median over calls. Quantising the graph's input,
    layout reorders and the call itself are left out: in the model they are the profile's "other"."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    hint = {"int8": "f32", "f32": "f32", "bf16": "bf16"}[precision]  # int8 comes from the FakeQuantize
    model, ops_per_call = timed_graph(shape, precision)
    compiled = core.compile_model(model, "CPU",
                                  {"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": hint,
                                   "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": "YES"})
    rng = np.random.default_rng(1)
    request = compiled.create_infer_request()
    for i, p in enumerate(compiled.inputs):  # set once, shared: no input copy inside the timed calls
        request.set_input_tensor(i, ov.Tensor(rng.uniform(0, 2.5, tuple(p.get_shape())).astype(np.float32)))
    timed = {node for node, names in fused_original_names(compiled).items()
             if any(n.startswith(TIMED) for n in names)}
    for _ in range(3):
        request.infer()
    times, start = [], time.perf_counter()
    while len(times) < max_iters and (time.perf_counter() - start < min_time_s or len(times) < 5):
        request.infer()
        times.append(sum(p.real_time.total_seconds() for p in request.get_profiling_info()
                         if p.status == p.Status.EXECUTED and p.node_name in timed))
    median_s = statistics.median(times)
    if not median_s > 0:
        raise RuntimeError(f"no timed node of {shape} executed: OpenVINO renamed or removed the op")
    return ops_per_call * shape.macs / median_s / 1e12


@dataclass
class MeasuredFloor:
    precision: str                      # kernel precision: f32, bf16, int8
    ms: float                           # Σ calls × MACs / throughput
    per_class_ms: dict[str, float]
    kernel_throughput: dict[str, float]  # op class → TMAC/s (MAC-weighted over its shapes)
    shapes: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


def measured_floor(counts: dict[OpShape, int], precision: str,
                   throughput: Callable[[OpShape, str], float]) -> MeasuredFloor:
    """Floor of a model whose matrix ops are ``counts`` (from :func:`collect_op_shapes`)."""
    kp = KERNEL_PRECISION.get(precision, precision)
    per_class_ms = {c: 0.0 for c in OP_CLASSES}
    class_macs = {c: 0.0 for c in OP_CLASSES}
    shapes = []
    for shape, calls in sorted(counts.items(), key=lambda kv: (kv[0].op_class, kv[0].dims)):
        rates = {k: float(throughput(shape, k)) for k in KERNEL_CANDIDATES.get(kp, (kp,))}
        if not all(r > 0 for r in rates.values()):
            raise ValueError(f"throughput of {shape} must be positive, got {rates}")
        kernel, tmacs = max(rates.items(), key=lambda kv: kv[1])
        ms = calls * shape.macs / (tmacs * 1e12) * 1e3
        per_class_ms[shape.op_class] += ms
        class_macs[shape.op_class] += calls * shape.macs
        shapes.append({"op_class": shape.op_class, "dims": list(shape.dims), "calls": calls,
                       "gmacs": calls * shape.macs / 1e9, "tmacs": tmacs, "kernel": kernel, "ms": ms})
    kernel = {c: class_macs[c] / (per_class_ms[c] * 1e-3) / 1e12 for c in OP_CLASSES if per_class_ms[c] > 0}
    return MeasuredFloor(kp, sum(per_class_ms.values()), {c: v for c, v in per_class_ms.items() if v > 0},
                         kernel, shapes)


class ThroughputCache:
    """Measures each (shape, precision) once per bench run."""

    def __init__(self, threads: int, measure=measure_throughput):
        self.threads, self.measure, self.table = threads, measure, {}

    def __call__(self, shape: OpShape, precision: str) -> float:
        key = (shape, precision)
        if key not in self.table:
            self.table[key] = self.measure(shape, precision, self.threads)
        return self.table[key]
