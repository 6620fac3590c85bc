"""The bench's artifact cache: one exported artifact per (model, stage, target, export precision,
options, batch) under ``cache/artifacts``, exported through the export pipeline when missing or
stale (model config or weights changed); a failed parity validation keeps the artifact, marked
failed."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from farl_edge.bench.matrix import BenchConfig, Row, export_setting, int8_mode_for, no_path_reason
from farl_edge.bench.weights import ModelInfo, backbone_module, changed_keys, source_weights_sha


def export_kwargs(cfg: BenchConfig, target: str, export_precision: str) -> dict:
    """The ExportRequest fields this target's rows set (from the formats table)."""
    from farl_edge.export.formats import get_format

    fmt = get_format(target)
    kwargs: dict = {}
    if export_precision == "int8":
        kwargs["int8_mode"] = int8_mode_for(fmt, cfg.onnx_int8_mode)
    options = applicable_options(cfg, target, export_precision)
    if options:
        kwargs["options"] = options
    return kwargs


def applicable_options(cfg: BenchConfig, target: str, export_precision: str) -> dict:
    """The run's --export-option values for this target that apply at this precision
    (openvino:nncf_preset only to int8: the fp32 rows of the same run stay the plain export)."""
    from farl_edge.export.formats import BUILDER_OPTIONS

    return {k: v for k, v in (cfg.export_options.get(target) or {}).items()
            if k not in BUILDER_OPTIONS or BUILDER_OPTIONS[k].applies_to(export_precision)}


def artifact_dir(cfg: BenchConfig, row: Row, export_precision: str) -> Path:
    from farl_edge.export.formats import get_format

    fmt = get_format(row.target)
    extra = ""
    if export_precision == "int8" and len(fmt.int8_modes) > 1:  # the mode is a choice: part of the name
        extra += f"-{int8_mode_for(fmt, cfg.onnx_int8_mode)}"
    options = applicable_options(cfg, row.target, export_precision)
    if options:
        extra += "-o" + hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    return cfg.cache / "artifacts" / f"{row.model}-{row.stage}-{row.target}-{export_precision}{extra}-b{row.batch}"


def stale_reason(manifest_path: Path, info: ModelInfo, row: Row) -> str | None:
    """Why a cached artifact no longer matches the model (config or weights changed), or None."""
    if not manifest_path.is_file():
        return None
    from farl_edge.registry import get_config

    manifest = json.loads(manifest_path.read_text())
    cached = manifest.get("model", {})
    current = get_config(info.name).to_dict()
    keys = ("vision", "taps", "input_size") if row.stage == "backbone" else tuple(current)
    changed = changed_keys(cached, current, keys)
    if changed:
        return f"model config changed ({', '.join(changed)})"
    # The backbone stage is exported from a module, so its manifest has no weights hash: the sidecar has it.
    sidecar = _source_sidecar(manifest_path.parent)
    recorded = (json.loads(sidecar.read_text()) if sidecar.is_file() else manifest.get("weights", {})).get("sha256")
    current_sha = source_weights_sha(info)
    if recorded and current_sha and recorded != current_sha:
        return "weights changed"
    return None


def _source_sidecar(dest: Path) -> Path:
    # Beside the artifact, not in it: files inside are hashed by the manifest.
    return dest.parent / f"{dest.name}.source.json"


def ensure_artifact(cfg: BenchConfig, info: ModelInfo, row: Row, log) -> tuple[Path, dict]:
    """The cached artifact for ``row`` (exported now when missing) and export facts for the report."""
    from farl_edge.export import pipeline
    from farl_edge.export.request import ExportRequest
    from farl_edge.export.validate import ParityError

    setting = export_setting(row.target, row.precision)
    if setting is None:
        raise ValueError(f"{row.target} has no {row.precision} path ({no_path_reason(cfg, row.target, row.precision)})")
    export_precision = setting.precision
    dest = artifact_dir(cfg, row, export_precision)
    manifest_path = dest / "manifest.json"
    facts: dict = {"artifact": str(dest)}
    stale = stale_reason(manifest_path, info, row)
    if stale:
        log(f"re-export {dest.name}: {stale}")
    if stale or not manifest_path.is_file():
        log(f"export {dest.name}")
        model = backbone_module(info) if row.stage == "backbone" else info.name
        kwargs = dict(model=model, target=row.target, precision=export_precision, output=dest, batch=row.batch,
                      eval_size=cfg.export_eval_size, calib_size=cfg.calib_size, keep_failed=True, force=True,
                      log=lambda m: None)
        if row.stage != "backbone":
            kwargs.update(checkpoint=info.checkpoint, pretrained=info.pretrained)
        if info.eval_dir:
            kwargs["eval_data"] = info.eval_dir
        if info.calib_dir and export_precision == "int8":
            kwargs["calib"] = info.calib_dir
        kwargs.update(export_kwargs(cfg, row.target, export_precision))
        t0 = time.time()
        try:
            pipeline.export(ExportRequest(**kwargs))
        except ParityError as e:
            log(f"  {dest.name}: parity validation failed (kept, marked failed): "
                + ", ".join(f"{c.stage}/{c.name}" for c in e.report.failed))
        facts["export_s"] = round(time.time() - t0, 1)
        _source_sidecar(dest).write_text(json.dumps({"model": info.name, "sha256": source_weights_sha(info)}))
    manifest = json.loads(manifest_path.read_text())
    facts["size_mb"] = sum(f["bytes"] for f in manifest["files"].values()) / 1e6
    status = manifest.get("status")
    facts["export_validation"] = "passed" if status == "ok" else (
        f"unvalidated: {manifest.get('validation', {}).get('reason', '?')}" if status == "unvalidated"
        else f"failed: {manifest.get('failure', '?')}")
    build = manifest.get("build", {})
    if "quantization" in build:
        q = build["quantization"]
        facts["quantization"] = {k: q[k] for k in ("mode", "tool", "model_type", "preset", "FakeQuantize", "op_types",
                                                    "QuantizeLinear", "integer_ops") if k in q}
    return dest, facts
