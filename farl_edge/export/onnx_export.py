"""ONNX: torch2onnx → onnx_check → fuse_for_ort (ORT transformer optimiser) → onnx2fp16 / int8.

Measured on farl-small-300w (torch 2.13, onnxruntime 1.32):

- exporters: ``dynamo=True`` gave 321 nodes, max |Δ| 2e-7 (heatmaps); ``dynamo=False``
  (TorchScript) gave 2799 nodes (shape arithmetic) and max |Δ| 3e-3 on heatmaps — dynamo is the
  default (``--exporter torchscript`` stays available);
- ORT's optimiser (``model_type="clip"``) fuses LayerNorm / SkipLayerNorm and QuickGelu, but our
  attention scales q *before* ``q @ kᵀ`` while its CLIP pattern wants ``(q @ kᵀ) * scale``;
  :func:`move_attention_scale` rewrites that (exact up to rounding, a scalar), after which all
  attention blocks fuse (6/6, 321 → 156 nodes, opt_level 1 folds the q/k/v weight Split).
  Fusion needs the symbolic batch: with a static one ORT rewrites each MatMul as Reshape+Gemm and
  nothing matches, so the batch is pinned only at the end (:func:`fix_batch`);
- fp16 on ORT's CPU provider is exact enough (cosine 1.0, Δ NME 1e-4) but not faster than fp32:
  it is meant for GPU / NPU providers.
"""
from __future__ import annotations

import collections
import contextlib
import io
import warnings
from pathlib import Path

import numpy as np

from farl_edge.export.config import ExportConfig
from farl_edge.export.formats import BuildJob, BuildResult
from farl_edge.utils import quiet

ORT_FP16_BLOCK = ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                  "Softmax", "Sigmoid", "Resize", "ReduceMean", "Pow", "Sqrt", "Div", "Erf")
SINGLE_FILE_LIMIT = 1_800_000_000  # protobuf's 2 GB limit, with margin
# Warns once per torchvision op it cannot register ("torchvision is not installed"); FaRL uses none.
ONNX_REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"


def torch2onnx(model, path: Path, export_cfg: ExportConfig, exporter: str | None = None) -> Path:
    """Export the PyTorch model; dynamo writes weights beside the graph (``.onnx.data``)."""
    import torch

    exporter = exporter or export_cfg.exporter
    if exporter not in ("dynamo", "torchscript"):
        raise ValueError(f"exporter must be 'dynamo' or 'torchscript', not {exporter!r}")
    s = export_cfg.input_size
    example = torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(0))
    kwargs = dict(input_names=list(export_cfg.input_names), output_names=list(export_cfg.output_names),
                  opset_version=export_cfg.opset)
    if exporter == "dynamo":
        kwargs["dynamo"] = True
        kwargs["external_data"] = True
        kwargs["verbose"] = False
        # Always a symbolic batch: with a static one dynamo emits Reshape+Gemm+Reshape for every
        # Linear, which ORT's attention fusion does not match. fix_batch() pins it afterwards.
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    else:
        kwargs["dynamo"] = False
        kwargs["dynamic_axes"] = {n: {0: "batch"} for n in (*export_cfg.input_names, *export_cfg.output_names)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet(ONNX_REGISTRY_LOGGER, stderr=True):
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(model, (example,), str(path), **kwargs)
    return path


def fix_batch(model, batch: int | None, dim_name: str = "batch") -> None:
    """Pin the symbolic batch dimension of graph inputs, outputs and value infos to ``batch``."""
    if batch is None:
        return
    graph = model.graph
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param == dim_name:
                dim.ClearField("dim_param")
                dim.dim_value = int(batch)


def onnx_check(path: Path) -> None:
    """onnx.checker with the full (shape-inference) check; path-based so external data works."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def graph_stats(model_or_path) -> dict:
    import onnx

    model = onnx.load(str(model_or_path), load_external_data=False) if isinstance(model_or_path, (str, Path)) \
        else model_or_path
    ops = collections.Counter(n.op_type for n in model.graph.node)
    return {"nodes": sum(ops.values()), "ops": dict(ops.most_common())}


def _topological_sort(graph) -> None:
    import onnx

    ready = {i.name for i in graph.initializer} | {i.name for i in graph.input} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError("graph has a cycle or a dangling input")
        pending = rest
    copies = []
    for node in ordered:
        c = onnx.NodeProto()
        c.CopyFrom(node)
        copies.append(c)
    del graph.node[:]
    graph.node.extend(copies)


def move_attention_scale(model) -> int:
    """``MatMul(Mul(q, s), kᵀ) → Softmax`` becomes ``Mul(MatMul(q, kᵀ), s) → Softmax`` (s a constant
    scalar), the form ORT's attention fusion matches. Returns how many blocks were rewritten."""
    graph = model.graph
    consts = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = node
    producer = {o: n for n in graph.node for o in n.output}
    consumers = collections.defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    moved = 0
    for matmul in graph.node:
        if matmul.op_type != "MatMul":
            continue
        mul = producer.get(matmul.input[0])
        if mul is None or mul.op_type != "Mul" or len(consumers[mul.output[0]]) != 1:
            continue
        scale = mul.input[1] if mul.input[1] in consts else (mul.input[0] if mul.input[0] in consts else None)
        if scale is None or not _is_scalar(consts[scale]):
            continue
        if not consumers[matmul.output[0]] or any(c.op_type != "Softmax" for c in consumers[matmul.output[0]]):
            continue
        q = mul.input[0] if scale == mul.input[1] else mul.input[1]
        out = matmul.output[0]
        matmul.input[0] = q
        matmul.output[0] = out + "_unscaled"
        del mul.input[:]
        mul.input.extend([out + "_unscaled", scale])
        mul.output[0] = out
        moved += 1
    if moved:
        _topological_sort(graph)
    return moved


def _is_scalar(const) -> bool:
    if hasattr(const, "dims"):  # initializer
        return int(np.prod(const.dims)) == 1
    value = next((a.t for a in const.attribute if a.name == "value"), None)
    return value is not None and int(np.prod(value.dims)) == 1


def save_onnx(model, path: Path) -> list[str]:
    """Save as one file when it fits, else with ``<name>.data`` beside it. Returns the file names."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() < SINGLE_FILE_LIMIT:
        onnx.save(model, str(path))
        return [path.name]
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=1024)
    return [path.name, path.name + ".data"]


def fuse_for_ort(src: Path, dst: Path, cfg) -> dict:
    """ORT transformer optimiser (model_type clip): fused Attention, SkipLayerNorm, QuickGelu."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    model = onnx.load(str(src))
    moved = move_attention_scale(model)
    staged = dst.with_name(dst.stem + ".prefuse.onnx")
    save_onnx(model, staged)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optimize_model(str(staged), model_type="clip", num_heads=int(cfg.vision["heads"]),
                             hidden_size=int(cfg.vision["width"]), opt_level=1)
        fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    save_onnx(opt.model, dst)
    return {"attention_scale_moved": moved, "fused": fused, **graph_stats(opt.model)}


def onnx2fp16(src: Path, dst: Path, block: tuple[str, ...] = ORT_FP16_BLOCK) -> dict:
    """fp16 weights and compute, fp32 graph I/O; LayerNorm / Softmax / ... stay fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(block),
                                        disable_shape_infer=False)
    save_onnx(half, dst)
    return {"fp16_op_block_list": list(block), **graph_stats(half)}


def build(job: BuildJob) -> BuildResult:
    """Builder of target ``onnx`` (see farl_edge.export.formats).

    Every graph step runs on the symbolic-batch graph (ORT's fusions need it: with a static batch
    its basic level rewrites each MatMul into Reshape+Gemm and attention no longer matches); the
    batch is pinned at the end for a fixed-batch artifact.
    """
    import onnx

    from farl_edge.export import onnxruntime_quant

    opts = job.options
    exporter = opts.get("exporter") or job.export_cfg.exporter
    raw = job.workdir / "exported.onnx"
    job.log(f"torch → onnx ({exporter} exporter, opset {job.export_cfg.opset})")
    torch2onnx(job.model, raw, job.export_cfg, exporter)
    onnx_check(raw)
    info = {"exporter": exporter, "exported": graph_stats(raw)}
    staged = job.workdir / "final.onnx"
    fused = job.workdir / "fused.onnx"
    int8_mode = opts.get("int8_mode") or "static"
    if job.precision == "int8" and int8_mode == "static":
        # QDQ on the un-fused graph: ORT folds Q/DQ + MatMul into integer kernels at load time,
        # while its fused Attention op would hide the q/k/v projections from the quantiser.
        op_types = tuple(opts.get("int8_op_types") or job.export_cfg.int8_op_types)
        if [t.lower() for t in op_types] == ["all"]:
            op_types = ()  # every op type ORT can quantise (measured worse; kept for comparison)
        job.log(f"int8 static QDQ ({', '.join(op_types) or 'all op types'}), {len(job.calibration)} calibration faces")
        info["quantization"] = onnxruntime_quant.quantize_static_qdq(
            raw, staged, job.calibration.batches(job.cfg, job.export_cfg.batch or 1), job.export_cfg.input_name,
            op_types=op_types, workdir=job.workdir)
    else:
        job.log("ORT transformer optimiser (clip fusions)")
        info["optimized"] = fuse_for_ort(raw, fused, job.cfg)
        if job.precision == "fp32":
            staged = fused
        elif job.precision == "fp16":
            job.log("fp16 conversion (I/O, LayerNorm, Softmax kept fp32)")
            info["fp16"] = onnx2fp16(fused, staged)
        else:
            job.log("int8 dynamic quantisation")
            info["quantization"] = onnxruntime_quant.quantize_dynamic_int8(fused, staged)
    final = onnx.load(str(staged))
    fix_batch(final, job.export_cfg.batch)
    files = save_onnx(final, job.folder / "model.onnx")
    info["final"] = graph_stats(final)
    return BuildResult(model_file="model.onnx", opset=job.export_cfg.opset, info={**info, "files": files},
                       runtime_options={"optimization_level": "all"})
