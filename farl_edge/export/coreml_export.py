"""Core ML: PyTorch → ML program (``model.mlpackage``) with coremltools, fp32 / fp16 / int8.

- Conversion: ``torch.jit.trace`` of the registry model itself → ``coremltools.convert(
  convert_to="mlprogram")``. (Its soft-argmax is one matmul with a 2-D grid,
  :func:`farl_edge.models.heads.soft_argmax`; the converter rejects a rank-1 right operand.)
- Input: ``ct.ImageType(name="image", shape=(1, 3, S, S), scale=1/255, bias=0, RGB)``. Our models
  take RGB in [0, 1] and normalise inside, so scale 1/255 is exact. Outputs keep the manifest
  names (``logits`` / ``landmarks``, ``heatmaps`` / ``embedding``) as fp32 multi-arrays.
- Precision: fp32 → ``compute_precision=FLOAT32``; fp16 → ``FLOAT16`` (the ML program default);
  int8 → fp16 compute + 8-bit weights (``linear_quantize_weights``, symmetric, per channel:
  ``constexpr_affine_dequantize`` at iOS17) and, where activation statistics can be gathered,
  8-bit activations (W8A8, ``linear_quantize_activations``; it calibrates by running Core ML
  predictions on face crops, which exist on macOS only — on Linux the int8 package is W8 with
  fp16 activations and the manifest says so). ``--coreml-weights palettize8|palettize6|palettize4``
  palettises (k-means LUT, ``constexpr_lut_to_dense``) instead of linear 8-bit.
- Deployment target, chosen: fp32 / fp16 → iOS16 / macOS13 (first release running ML programs
  with fp32 multi-array outputs from an fp16 program, widest reach); int8 → iOS17 / macOS14
  (activation ``quantize`` / ``dequantize`` ops and per-channel int8 weights). Recorded in the
  manifest and in the model's metadata.
- Metadata: author, licence, short description, input / output descriptions, and
  ``user_defined_metadata`` (model, task, labels, landmark count, input size, precision, ...).

Core ML cannot predict on Linux: here the package is checked structurally
(:func:`inspect_package`: I/O names, types and shapes, compute precision, quantised weight ops,
the op list); parity runs on macOS (``farl_edge.runtime.backends.coreml_backend``).
"""
from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import numpy as np

from farl_edge.utils import package_version
from farl_edge.utils import quiet as _quiet

PACKAGE = "model.mlpackage"
INPUT = "image"  # Core ML image input (apps feed CVPixelBuffers); the manifest's input name maps to it
MODEL_FILE = f"{PACKAGE}/Manifest.json"  # a file the artifact's sha256 table can list (the package is a folder)
AUTHOR = "farl-edge"
LICENSE = "MIT (farl-edge code); model weights under the licence of their source (FaRL / data sets)"
TARGETS = {"fp32": "iOS16", "fp16": "iOS16", "int8": "iOS17"}
QUANTIZED_WEIGHT_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale", "constexpr_lut_to_dense",
                        "constexpr_sparse_to_dense", "constexpr_cast")
ACTIVATION_QUANT_OPS = ("quantize", "dequantize")
WEIGHT_MODES = ("linear8", "palettize8", "palettize6", "palettize4")


def quiet():
    """coremltools prints progress bars (stderr) and version warnings; keep the export log readable."""
    return _quiet(stderr=True)


def import_coremltools():
    with quiet():
        import coremltools as ct
    return ct


def _metadata(ct_model, cfg, precision: str, target: str, details: dict) -> None:
    ct_model.author = AUTHOR
    ct_model.license = LICENSE
    ct_model.version = _version()
    task_text = {"parsing": f"face parsing, {len(cfg.labels or [])} classes",
                 "alignment": f"face alignment, {cfg.num_landmarks} landmarks",
                 "backbone": "FaRL face image embedding"}[cfg.task]
    ct_model.short_description = f"{cfg.name}: {task_text} ({precision}). {cfg.description}".strip()
    ct_model.input_description[INPUT] = (f"RGB face crop, {cfg.crop_size}x{cfg.crop_size}, prepared as "
                                           f"farl-edge crops ({cfg.preprocess.warp} warp)")
    out_text = {"logits": "per-class logits at 1/4 input resolution (B, C, S/4, S/4)",
                "landmarks": "landmarks (B, K, 2), x then y, in input pixels",
                "heatmaps": "landmark heatmaps (B, K, S/4, S/4) in [0, 1]",
                "embedding": "image embedding (B, D)"}
    for name in ct_model.output_description:
        if name in out_text:
            ct_model.output_description[name] = out_text[name]
    meta = {"farl_edge.model": cfg.name, "farl_edge.task": cfg.task, "farl_edge.input_size": str(cfg.crop_size),
            "farl_edge.precision": precision, "farl_edge.deployment_target": target,
            "farl_edge.preprocess": json.dumps(cfg.preprocess, sort_keys=True),
            "farl_edge.input": "RGB uint8 image; scale 1/255 → [0, 1]; CLIP mean/std applied inside the model",
            "farl_edge.weights": details.get("weights", "fp16" if precision != "fp32" else "fp32"),
            "farl_edge.activations": details.get("activations", "fp16" if precision != "fp32" else "fp32")}
    if cfg.labels:
        meta["farl_edge.labels"] = json.dumps(list(cfg.labels))
    if cfg.num_landmarks:
        meta["farl_edge.num_landmarks"] = str(cfg.num_landmarks)
    if cfg.dataset:
        meta["farl_edge.dataset"] = cfg.dataset
    ct_model.user_defined_metadata.update(meta)


def _version() -> str:
    return package_version("farl-edge", "0")


def convert(model, precision: str = "fp16", *, output_names=None, target: str | None = None):
    """Trace and convert ``model`` (a FaRLModel) to an ML program (not yet quantised)."""
    import torch

    ct = import_coremltools()
    cfg = model.cfg
    if precision not in TARGETS:
        raise ValueError(f"Core ML precisions are {', '.join(TARGETS)}, not {precision!r}")
    target = target or TARGETS[precision]
    if not hasattr(ct.target, target):
        raise ValueError(f"unknown Core ML deployment target {target!r}")
    s = cfg.crop_size
    names = list(output_names or model.output_names)
    example = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    with quiet(), torch.no_grad(), torch.inference_mode(False):
        traced = torch.jit.trace(model.eval(), example)
        ml = ct.convert(
            traced,
            inputs=[ct.ImageType(name=INPUT, shape=(1, 3, s, s), scale=1.0 / 255.0, bias=[0.0, 0.0, 0.0],
                                 color_layout=ct.colorlayout.RGB)],
            outputs=[ct.TensorType(name=n, dtype=np.float32) for n in names],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
            minimum_deployment_target=getattr(ct.target, target),
        )
    return ml, target


def quantize_weights(ml, mode: str = "linear8"):
    """8-bit linear (symmetric, per output channel) or k-means palettisation of the weights."""
    import coremltools.optimize.coreml as cto

    if mode == "linear8":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel"))
        with quiet():
            return cto.linear_quantize_weights(ml, config), "int8 linear symmetric per-channel"
    if mode.startswith("palettize"):
        nbits = int(mode[len("palettize"):])
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=nbits))
        with quiet():
            return cto.palettize_weights(ml, config), f"{nbits}-bit k-means palette (LUT)"
    raise ValueError(f"--coreml-weights must be one of {', '.join(WEIGHT_MODES)}, not {mode!r}")


def can_predict() -> tuple[bool, str]:
    """Whether Core ML predictions run here (macOS with coremltools' native module)."""
    if sys.platform != "darwin":
        return False, "Core ML runs only on macOS"
    try:
        import coremltools.libcoremlpython  # noqa: F401
    except ImportError as e:
        return False, f"coremltools has no Core ML runtime here ({e})"
    return True, ""


def face_images(batches) -> list:
    """Face crops (N, 3, S, S) float [0, 1] → PIL RGB images, what the ImageType input takes."""
    from PIL import Image

    images = []
    for batch in batches:
        for x in np.asarray(batch):
            images.append(Image.fromarray(np.clip(np.rint(x.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)))
    return images


def quantize_activations(ml, images) -> str:
    """W8A8: 8-bit activations calibrated on face crops (Core ML predictions: macOS only)."""
    import coremltools.optimize.coreml as cto

    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"))
    with quiet():
        return cto.linear_quantize_activations(ml, config, [{INPUT: im} for im in images])


def inspect_package(path: str | Path) -> dict:
    """Structure of a saved ``.mlpackage`` without the Core ML runtime (works on Linux).

    Raises ValueError with a clear message when the package is missing or corrupt.
    """
    path = Path(path)
    if path.name == "Manifest.json":
        path = path.parent
    if not path.is_dir():
        raise ValueError(f"Core ML package {path} does not exist (an .mlpackage is a folder)")
    for need in ("Manifest.json", "Data/com.apple.CoreML/model.mlmodel"):
        if not (path / need).is_file():
            raise ValueError(f"corrupt Core ML package {path}: {need} is missing")
    ct = import_coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as mil_load

    try:
        with quiet():
            ml = ct.models.MLModel(str(path), skip_model_load=True)
            spec = ml.get_spec()
            prog = mil_load(spec, specification_version=spec.specificationVersion, file_weights_dir=ml.weights_dir)
    except Exception as e:  # noqa: BLE001 - protobuf / MIL errors of every kind mean "corrupt"
        raise ValueError(f"corrupt Core ML package {path}: {type(e).__name__}: {str(e)[:200]}") from None
    return describe(ml, spec, prog, path)


def describe(ml, spec, prog, path: Path | None = None) -> dict:
    from coremltools.proto import FeatureTypes_pb2 as ft

    def feature(f):
        kind = f.type.WhichOneof("Type")
        if kind == "imageType":
            t = f.type.imageType
            space = ft.ImageFeatureType.ColorSpace.Name(t.colorSpace)
            return {"name": f.name, "type": "image", "shape": [1, 3, t.height, t.width], "color": space}
        if kind == "multiArrayType":
            t = f.type.multiArrayType
            return {"name": f.name, "type": "multiarray", "shape": list(t.shape),
                    "dtype": ft.ArrayFeatureType.ArrayDataType.Name(t.dataType).lower()}
        return {"name": f.name, "type": kind}

    ops = collections.Counter()
    dtypes = collections.Counter()
    for fn in prog.functions.values():
        for op in _walk(fn.operations):
            ops[op.op_type] += 1
            if op.op_type in ("const",) or op.op_type.startswith("constexpr"):
                continue
            for out in op.outputs:
                name = getattr(out.dtype, "__name__", str(out.dtype))
                if name in ("fp16", "fp32"):
                    dtypes[name] += 1
    compute = "fp16" if dtypes.get("fp16", 0) > dtypes.get("fp32", 0) else "fp32"
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path else None
    quant_ops = {k: ops[k] for k in QUANTIZED_WEIGHT_OPS if ops.get(k)}
    act_ops = {k: ops[k] for k in ACTIVATION_QUANT_OPS if ops.get(k)}
    return {"inputs": [feature(f) for f in spec.description.input],
            "outputs": [feature(f) for f in spec.description.output],
            "specification_version": spec.specificationVersion,
            "deployment_target": _spec_target(spec.specificationVersion),
            "compute_precision": compute, "op_output_dtypes": dict(dtypes),
            "ops": dict(ops.most_common()), "quantized_weight_ops": quant_ops, "activation_quant_ops": act_ops,
            "metadata": dict(spec.description.metadata.userDefined),
            "author": spec.description.metadata.author, "license": spec.description.metadata.license,
            "short_description": spec.description.metadata.shortDescription,
            "package_bytes": size}


def _walk(operations):
    for op in operations:
        yield op
        for block in getattr(op, "blocks", []) or []:
            yield from _walk(block.operations)


def _spec_target(version: int) -> str:
    return {6: "iOS15", 7: "iOS16", 8: "iOS17", 9: "iOS18"}.get(int(version), f"spec {version}")


def package_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def export_package(model, dst: Path, precision: str, *, output_names=None, weights: str | None = None,
                   target: str | None = None, calibration_batches=None, activations: str = "auto",
                   log=print) -> dict:
    """Convert, quantise (int8), add metadata and save ``dst`` (an ``.mlpackage``); returns the record.

    ``activations`` (int8): "auto" = W8A8 where Core ML predictions run (macOS), else W8;
    "int8" = require W8A8 (ValueError where impossible); "fp16" = weights only.
    """
    import time

    cfg = model.cfg
    t0 = time.perf_counter()
    ml, target = convert(model, precision, output_names=output_names, target=target)
    record: dict = {"converter": "torch.jit.trace → coremltools.convert (mlprogram)",
                    "coremltools": import_coremltools().__version__, "deployment_target": target,
                    "compute_precision": "fp32" if precision == "fp32" else "fp16",
                    "convert_s": round(time.perf_counter() - t0, 1)}
    details = {}
    if precision == "int8":
        # activations first, on the float program (coremltools calibrates the un-quantised model)
        ok, why = can_predict()
        if activations not in ("auto", "int8", "fp16"):
            raise ValueError(f"activations must be auto, int8 or fp16, not {activations!r}")
        if activations == "int8" and not ok:
            raise ValueError(f"W8A8 calibration runs Core ML predictions: {why}; use activations='fp16' (W8) here")
        if activations != "fp16" and ok:
            if calibration_batches is None:
                raise ValueError("W8A8 needs calibration faces")
            images = face_images(calibration_batches)
            log(f"Core ML activations: int8, calibrated on {len(images)} face crops")
            t0 = time.perf_counter()
            ml = quantize_activations(ml, images)
            details["activations"] = "int8 linear symmetric (calibrated on face crops)"
            record["activation_quantization_s"] = round(time.perf_counter() - t0, 1)
            record["calibration_images"] = len(images)
        else:
            details["activations"] = "fp16"
            record["activation_quantization"] = f"not applied: {why or 'weights only asked'} (W8, fp16 activations)"
    if precision == "int8" or weights:
        mode = weights or "linear8"
        t0 = time.perf_counter()
        log(f"Core ML weights: {mode}")
        ml, text = quantize_weights(ml, mode)
        details["weights"] = text
        record["weight_quantization_s"] = round(time.perf_counter() - t0, 1)
    record["weights"] = details.get("weights", "fp16" if precision != "fp32" else "fp32")
    record["activations"] = details.get("activations", "fp16" if precision != "fp32" else "fp32")
    _metadata(ml, cfg, precision, target, details)
    with quiet():
        ml.save(str(dst))
    record["package_bytes"] = package_bytes(dst)
    summary = inspect_package(dst)
    record["spec"] = {k: summary[k] for k in ("inputs", "outputs", "specification_version", "compute_precision",
                                              "quantized_weight_ops", "activation_quant_ops")}
    record["ops"] = summary["ops"]
    return record


def check_spec(summary: dict, export_cfg, precision: str) -> dict:
    """The package's spec against what the manifest promises: I/O names and shapes, an RGB image
    input, the compute precision, quantised weight ops for int8. Raises ParityError on a mismatch."""
    from farl_edge.export.validate import ParityError, ParityReport, check_io

    s = export_cfg.input_size
    expected = {INPUT: [1, 3, s, s], **export_cfg.output_shapes()}
    actual = {f["name"]: f["shape"] for f in summary["inputs"] + summary["outputs"]}
    checked = check_io("Core ML package", expected, actual)
    report = ParityReport()
    image = summary["inputs"][0]
    report.add("spec", "input type", f"{image['type']} {image.get('color', '')}".strip(), "image RGB", "==")
    report.add("spec", "compute precision", summary["compute_precision"], "fp32" if precision == "fp32" else "fp16",
               "==")
    if precision == "int8":
        report.add("spec", "quantised weight ops", sum(summary["quantized_weight_ops"].values()), 1, ">=")
    if not report.passed:
        raise ParityError(report, what="Core ML package spec")
    return {"io": checked, **{c.name: c.measured for c in report.checks}}


def build(job):
    """Builder of target ``coreml`` (see farl_edge.export.formats)."""
    from farl_edge.export.formats import BuildResult

    if job.export_cfg.batch != 1:
        raise ValueError("Core ML packages take one image (batch 1): the runtime runs a batch image by image; "
                         "pass --batch 1")
    opts = job.options
    batches = None
    if job.precision == "int8" and job.calibration is not None:
        batches = list(job.calibration.batches(job.cfg, 1))
    job.log(f"torch → Core ML ML program ({job.precision})")
    record = export_package(job.model, job.folder / PACKAGE, job.precision,
                            output_names=job.export_cfg.output_names, weights=opts.get("coreml_weights"),
                            target=opts.get("deployment_target"), calibration_batches=batches,
                            activations=opts.get("coreml_activations", "auto"), log=job.log)
    job.log(f"Core ML package {record['package_bytes'] / 1e6:.1f} MB, target {record['deployment_target']}")
    spec = check_spec({**record["spec"], "ops": record["ops"]}, job.export_cfg, job.precision)
    return BuildResult(model_file=MODEL_FILE, opset=None, info=record, checks={"spec": spec},
                       runtime_options={"compute_units": "ALL"})
