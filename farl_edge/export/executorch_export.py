"""ExecuTorch (Android, also iOS / embedded): PyTorch → ``model.pte`` lowered to XNNPACK, fp32 / int8.

- Graph: ``torch.export`` of the registry model at the artifact's fixed batch →
  ``to_edge_transform_and_lower`` with the ``XnnpackPartitioner`` → ``to_executorch``. Every op
  XNNPACK takes runs in its delegate; the rest runs on ExecuTorch's portable kernels (the build
  record counts both: a model that lost its delegate is an error, not a slow artifact).
- int8: PT2E static quantisation with ExecuTorch's ``XNNPACKQuantizer`` (symmetric, per-channel
  int8 weights, per-tensor int8 activations), calibrated on the calibration faces, then lowered
  the same way (XNNPACK's QS8 kernels).
- Input ``image`` (B, 3, S, S) float32 RGB in [0, 1], outputs in the manifest's order, as every
  other target. The Android app runs it with ``org.pytorch.executorch.Module`` (runtimes/android).
"""
from __future__ import annotations

from farl_edge.export.config import example_input
from farl_edge.utils import package_version, quiet

PTE = "model.pte"


def quantize_pt2e(model, example, calibration_batches, log=print):
    """PT2E int8 with XNNPACK's quantiser, calibrated on real face crops."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    n = 0
    for batch in calibration_batches:
        prepared(torch.from_numpy(batch))
        n += len(batch)
    if not n:
        raise ValueError("int8 needs calibration faces (--calib)")
    log(f"PT2E int8 (XNNPACKQuantizer, per-channel weights), calibrated on {n} faces")
    return convert_pt2e(prepared), n


def lower(model, example):
    """(ExecuTorch program buffer, delegation counts) of ``model`` lowered to XNNPACK."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    import executorch.kernels.quantized  # noqa: F401 - out variants of the (de)quantise ops XNNPACK leaves

    with torch.no_grad():
        edge = to_edge_transform_and_lower(torch.export.export(model, example), partitioner=[XnnpackPartitioner()])
    graph = edge.exported_program().graph
    calls = [n for n in graph.nodes if n.op == "call_function"]
    delegated = sum(1 for n in calls if "executorch_call_delegate" in str(n.target))
    counts = {"xnnpack_partitions": delegated, "portable_ops": len(calls) - delegated}
    return edge.to_executorch().buffer, counts


def build(job):
    """Builder of target ``executorch`` (see farl_edge.export.formats)."""
    from farl_edge.export.formats import BuildResult

    example = example_input(job.export_cfg, "ExecuTorch")
    model = job.model.eval()
    info = {"exporter": f"executorch {package_version('executorch', '?')}", "delegate": "XNNPACK"}
    with quiet(stderr=True):
        if job.precision == "int8":
            batches = job.calibration.batches(job.cfg, job.export_cfg.batch) if job.calibration is not None else []
            model, info["calibration_faces"] = quantize_pt2e(model, example, batches, job.log)
            info["quantizer"] = "XNNPACKQuantizer symmetric, per-channel weights, static activations"
        job.log(f"torch.export → ExecuTorch, XNNPACK delegate ({job.precision})")
        buffer, counts = lower(model, example)
    if counts["xnnpack_partitions"] == 0:
        raise RuntimeError("nothing was delegated to XNNPACK: the program would run on portable kernels only")
    (job.folder / PTE).write_bytes(buffer)
    info.update(counts, program_bytes=len(buffer))
    job.log(f"model.pte {len(buffer) / 1e6:.1f} MB; {counts['xnnpack_partitions']} XNNPACK partition(s), "
            f"{counts['portable_ops']} op(s) on portable kernels")
    return BuildResult(model_file=PTE, info=info, checks={"delegation": counts})
