"""``export(ExportRequest(model=..., target=..., precision=...))``: one export, end to end.

resolve model → check format/precision/output → evaluation faces → calibration faces (int8)
→ builder (formats table) → manifest → open with the runtime → validate against PyTorch
→ publish (rename the staging folder) or remove / keep marked failed.

Artifacts whose runtime cannot run on the exporting machine (a TensorRT engine without an NVIDIA
GPU, a Core ML package off macOS) are published with status ``unvalidated``: the builder's own
checks passed (prepared ONNX graph against PyTorch on ONNX Runtime, the Core ML spec), the
parity run is pending, and ``farl-edge validate ARTIFACT`` does it on the target machine.
``ExportRequest(require_validation=True)`` (``--require-validation``) refuses such artifacts instead.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from farl_edge.errors import UserError
from farl_edge.export import manifest as mf
from farl_edge.export.calibration import calibration_set, evaluation_set
from farl_edge.export.config import TOLERANCES, export_config
from farl_edge.export.formats import BUILDER_OPTIONS, FORMATS, BuildJob, get_format
from farl_edge.export.request import ExportRequest
from farl_edge.export.validate import ParityError, ParityReport, compare
from farl_edge.registry import ModelConfig, weights_path

@dataclass
class ExportResult:
    path: Path
    manifest: dict
    report: ParityReport | None  # None when the runtime cannot run here (status "unvalidated")
    seconds: float

    @property
    def status(self) -> str:
        return self.manifest["status"]


def default_output(model_name: str, target: str, precision: str, root: Path | None = None) -> Path:
    return (root or Path("artifacts")) / f"{model_name}-{target}-{precision}"


def resolve_model(model, checkpoint=None, pretrained: bool = True, input_size: int | None = None,
                  trust_torchscript: bool = False, protocol: str | None = None):
    """A registry name / ModelConfig / FaRLModel → (FaRLModel in eval mode, weights description).

    ``protocol`` (``farl`` / ``direct``) replaces the config's preprocessing protocol."""
    from farl_edge.models import create_model

    if isinstance(model, (str, ModelConfig)):
        name = model
        if isinstance(model, str) and model.endswith(".safetensors") and Path(model).is_file():
            from farl_edge.checkpoint import read_card

            card = read_card(model)
            if "model" not in card:
                raise UserError(f"{model}: its model card names no model (key 'model')")
            checkpoint, name = model, card["model"]
        net = create_model(name, checkpoint=checkpoint, pretrained=pretrained, trust_torchscript=trust_torchscript)
        cfg = net.cfg
        if checkpoint:
            weights = {"source": "checkpoint", "path": str(checkpoint)}
        elif pretrained and weights_path(cfg):
            weights = {"source": "shipped", "file": cfg.weights}
        else:
            weights = {"source": "random-init"}
    else:
        net, weights = model.eval(), {"source": "module"}
    if input_size and input_size != net.cfg.input_size:
        net.backbone.set_image_size(int(input_size))
        net.cfg = dataclasses.replace(net.cfg, input_size=int(input_size))
    if protocol and protocol != net.cfg.preprocess.protocol:
        net.cfg = net.cfg.with_protocol(protocol)
    file = weights.get("path") or (weights_path(net.cfg) if weights["source"] == "shipped" else None)
    if file and Path(file).is_file():
        weights["sha256"] = mf.sha256_file(file)
    return net.eval(), weights


def check_request(request: ExportRequest):
    """The format of ``request`` after the checks that need nothing but the request (UserError)."""
    target, precision = request.target, request.precision
    if not target:
        raise UserError("an export request needs a target (" + "|".join(FORMATS) + ")")
    fmt = get_format(target)
    fmt.check(precision, request.int8_mode if precision == "int8" else None)
    if request.max_drop is not None and not (target == "openvino" and precision == "int8"):
        raise UserError("--max-drop applies to openvino int8 (NNCF accuracy control) only")
    if request.tolerance is not None and request.tolerance not in TOLERANCES:
        raise UserError(f"unknown tolerance set {request.tolerance!r}")
    if request.calib_size < 1 or request.eval_size < 1:
        raise UserError("--calib-size and --eval-size must be >= 1")
    unknown = sorted(set(request.options) - set(fmt.options))
    if unknown:
        raise UserError(f"target {target!r} takes no option {', '.join(unknown)}; its options: "
                        f"{', '.join(fmt.options) or 'none'}")
    for name in request.options:
        option = BUILDER_OPTIONS.get(name)
        if option is not None and not option.applies_to(precision):
            raise UserError(f"{option.flag} applies to {target} {'/'.join(option.precisions)} only, not {precision}")
    return fmt


def export(request: ExportRequest) -> ExportResult:
    """Export one model to one target/precision, validate it, and publish the artifact folder.

    ``request.options``: target-specific builder options (``Format.options`` in the formats table),
    e.g. ``{"compute_capability": "sm89", "max_batch": 16}`` for TensorRT or
    ``{"coreml_weights": "palettize6"}`` for Core ML.

    Raises UserError (a ValueError) for bad requests (before anything is written), ParityError when the
    artifact fails validation (folder removed, or kept and marked failed with ``keep_failed``).
    """
    if not isinstance(request, ExportRequest):
        raise TypeError(f"export() takes one ExportRequest, not {type(request).__name__} "
                        f"(e.g. export(ExportRequest(model=..., target='onnx', precision='fp32')))")
    started = time.time()
    fmt = check_request(request)
    r = request
    target, precision, log = r.target, r.precision, r.log
    options = dict(r.options)
    from farl_edge.runtime.backends import backend_available

    can_run, why_not = backend_available(fmt.backend)
    if r.require_validation and not can_run:
        raise UserError(f"{target} artifacts cannot be validated on this machine ({why_not}); drop "
                        f"--require-validation to publish it unvalidated and run `farl-edge validate` "
                        f"on the target machine")
    net, weights = resolve_model(r.model, r.checkpoint, r.pretrained, r.input_size, protocol=r.protocol)
    cfg = net.cfg
    ecfg = export_config(cfg, batch=r.batch, **({"exporter": r.exporter} if r.exporter else {}))
    shown = Path(r.output) if r.output else default_output(cfg.name, target, precision)
    dest = Path(os.path.abspath(shown))  # "." and "out/" get a usable name and parent
    mf.check_replaceable(dest, r.force)
    mf.check_writable(dest)
    evaluation = evaluation_set(cfg, r.eval_data, r.eval_size)
    calibration = calibration_set(cfg, r.calib, r.calib_size) if precision == "int8" and not (
        target in ("onnx", "litert") and r.int8_mode == "dynamic") else None
    if calibration is not None and calibration.kind == "images" and r.calib \
            and cfg.preprocess.get("warp") not in (None, "full"):
        log(f"note: {r.calib} has no annotations: calibration crops are whole images resized "
            f"(the model expects {cfg.preprocess.get('warp', 'box')} crops)")

    from farl_edge.models.predictor import TorchPredictor
    from farl_edge.runtime import load

    from farl_edge.fileio import sweep_stale

    tmp_root = Path(tempfile.gettempdir())
    sweep_stale(tmp_root, "farl-export", kinds=("work",))
    with mf.staging_folder(dest) as staging, \
            tempfile.TemporaryDirectory(prefix=".farl-export.work.p%d-" % os.getpid(), dir=tmp_root) as work:
        job = BuildJob(model=net, cfg=cfg, export_cfg=ecfg, precision=precision, folder=staging, workdir=Path(work),
                       calibration=calibration, evaluation=evaluation, log=log,
                       options={"int8_mode": r.int8_mode, "int8_op_types": r.int8_op_types, "max_drop": r.max_drop,
                                "exporter": r.exporter, "inference_precision": r.inference_precision, **options})
        t0 = time.time()
        built = fmt.load_builder()(job)
        timings = {"build_s": round(time.time() - t0, 1)}
        tol_name = r.tolerance or built.tolerance or precision
        tol = ecfg.tolerance(tol_name, r.tolerance_overrides)
        card = cfg.to_dict()
        manifest = mf.new_manifest(
            status="validating", model=card, task=cfg.task, name=cfg.name,
            **({"labels": cfg.labels} if cfg.labels else {}),
            **({"num_landmarks": cfg.num_landmarks} if cfg.num_landmarks else {}),
            input_size=cfg.crop_size, network_size=cfg.input_size, mean=cfg.mean, std=cfg.std,
            preprocess=cfg.preprocess,
            target=target, precision=precision, backend=fmt.backend, model_file=built.model_file,
            opset=built.opset, batch=ecfg.batch_dim,
            inputs=[{"name": ecfg.input_name, "shape": ecfg.input_shape(), "dtype": "float32", "layout": "NCHW",
                     "color": "RGB", "range": [0.0, 1.0]}],
            outputs=[{"name": n, "shape": s, "dtype": "float32"}
                     for n, s in ecfg.output_shapes(cfg.vision.get("output_dim")).items()],
            weights=weights, runtime={"backend": fmt.backend, "options": built.runtime_options},
            build={"int8_mode": r.int8_mode if precision == "int8" else None, **built.info,
                   **({"options": options} if options else {})},
            calibration=calibration.describe() if calibration is not None else None,
            recipe=r.recipe,
        )
        mf.write_manifest(staging, manifest)
        if not can_run:
            # The builder's own checks passed (it raises otherwise); the parity run needs the target.
            manifest["status"] = "unvalidated"
            manifest["validation"] = {"status": "pending", "reason": f"{fmt.backend} cannot run here: {why_not}",
                                      "tolerance_set": tol_name, "builder_checks": built.checks,
                                      "how": f"farl-edge validate {shown} --update  (on the target machine)"}
            timings["total_s"] = round(time.time() - started, 1)
            manifest["timings"] = timings
            mf.write_manifest(staging, manifest)
            mf.publish(staging, dest, overwrite=r.force)
            log(f"published unvalidated: {why_not}")
            return ExportResult(shown, manifest, None, time.time() - started)
        log(f"validating against PyTorch on {len(evaluation)} faces ({evaluation.source}), tolerance {tol_name}")
        t0 = time.time()
        crash = None
        try:
            session = load(staging, allow_failed=True)
            manifest["runtime"]["session"] = session.info
            report = compare(TorchPredictor(net), session, evaluation.samples, tol, ecfg.output_names,
                             raise_on_fail=False)
        except Exception as e:  # noqa: BLE001 - a crash of the artifact is a failed validation too
            report = ParityReport(faces=len(evaluation), tolerance=tol.to_dict())
            report.add("names", "run", f"{type(e).__name__}: {e}"[:200], "no error", "==")
            crash = traceback.format_exc()  # the whole story, for whoever reads the manifest
        manifest["validation"] = {"tolerance_set": tol_name, "data": evaluation.describe(), **report.to_dict(),
                                  **({"traceback": crash} if crash else {})}
        timings.update(validate_s=round(time.time() - t0, 1), total_s=round(time.time() - started, 1))
        manifest["timings"] = timings
        if report.passed:
            manifest["status"] = "ok"
            mf.write_manifest(staging, manifest)
            mf.publish(staging, dest, overwrite=r.force)
            return ExportResult(shown, manifest, report, time.time() - started)
        manifest["status"] = "failed"
        manifest["failure"] = report.failure
        if r.keep_failed:
            mf.write_manifest(staging, manifest)
            mf.publish(staging, dest, overwrite=True)
        raise ParityError(report, f"{cfg.name} → {target} {precision}")
