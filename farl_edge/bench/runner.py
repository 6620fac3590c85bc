"""The benchmark matrix: models × targets × precisions × stages × batch sizes, one report.

``run_bench(BenchConfig(...))`` runs the steps below in order; each step is a module of its own:

1. detect the CPU (:mod:`farl_edge.bench.hardware`), resolve each model's weights
   (:mod:`farl_edge.bench.weights`: shipped, a checkpoint, or a seeded random init saved once as a
   checkpoint so that every row — PyTorch and every exported artifact — runs the same weights),
   count its GMACs (``count_macs``: total, backbone, head);
2. plan the rows (:mod:`farl_edge.bench.matrix`). Which targets and precisions exist, and how
   each exports, comes from the formats table (:data:`farl_edge.export.formats.FORMATS`:
   ``Format.precisions``, ``Format.int8_modes``, ``Format.options``): a format registered there
   is a bench target with no change here. Precision per target:

   | target | fp32 | bf16 | fp16 | int8 |
   | --- | --- | --- | --- | --- |
   | torch (``device`` cpu) | eager fp32 | ``torch.autocast`` bf16 | – | – |
   | torch (``device`` cuda) | eager fp32, TF32 off | autocast bf16 | autocast fp16 | – |
   | torch-compile (CPU, whole model) | inductor, frozen weights | + autocast bf16 | – | PT2E, x86 inductor quantiser (b) |
   | onnx | ORT, fused graph | – | fp16 graph | dynamic (default) or static QDQ |
   | openvino | fp32 IR, hint f32 | the same fp32 IR, hint bf16 | fp16-compressed IR | NNCF PTQ (a) |
   | any other format (tensorrt, tensorrt-rtx, coreml, ...) | each of ``Format.precisions`` | | | |

   (a) the rest in the device default: bf16 on AMX. (b) torchao's ``X86InductorQuantizer`` default
   config (static per-tensor activations, per-channel weights), calibrated on the export's
   calibration faces, then ``torch.compile``. The OpenVINO hints are
   INFERENCE_PRECISION_HINT; the OpenVINO fp32/bf16 rows are the only bench-side settings
   (:data:`~farl_edge.bench.matrix.RUNTIME_VARIANTS`, keyed by (target, precision)). Any other
   format's rows are exported as themselves. ``precisions`` items may name a target
   (``tensorrt:fp16``). Targets that cannot run here (no NVIDIA GPU, not macOS, library missing)
   become rows with their reason; precisions a target has no path for are listed as "not
   measured". PyTorch fp32 rows are always measured: they are the reference for "× torch",
   Δmetric and the cosine;
3. export what is missing through the export pipeline's Python API
   (:mod:`farl_edge.bench.artifacts`, cached under ``cache/artifacts``: one fixed-batch artifact
   per batch size, as deployed; a failed parity validation keeps the artifact, marked failed, and
   the row says so);
4. measure each row in a fresh subprocess (:mod:`farl_edge.bench.driver` starts it,
   :mod:`farl_edge.bench.worker` runs it);
5. derive × torch, the compute floor and the measured floor (rows that run on the host CPU only),
   Δmetric (:mod:`farl_edge.bench.derive`); write the report (:mod:`farl_edge.bench.report`).

``dry_run`` stops after the plan (no weights, no exports): rows, availability, the artifacts
that would be exported and the data folders found, written to ``plan.json`` / ``plan.md``.
``budget_s`` stops starting rows once that many seconds have passed: the rest are ``skipped``.

Stages: ``full`` (the whole model), ``backbone`` and ``head``. PyTorch times ``model.features``
and ``model.head`` (on precomputed features) separately. Exported backbones are the same ViT
exported as a backbone-task model (weights copied; its output is the CLS embedding, so it adds
``ln_post`` + ``proj`` on one token, < 0.01 % of the MACs); the exported head stage is derived as
full − backbone (marked "derived"). Stage rows run at the first batch size only.
"""
from __future__ import annotations

import platform
import time

from farl_edge.bench import hardware
from farl_edge.bench.artifacts import artifact_dir, ensure_artifact, export_kwargs
from farl_edge.bench.derive import derive, kernel_throughput, measured_floors
from farl_edge.bench.driver import measure_row, prepare_inputs
from farl_edge.bench.matrix import METRIC, TORCH_TARGETS, BenchConfig, Row, export_setting, plan
from farl_edge.bench.weights import ModelInfo, data_dir, resolve_weights
from farl_edge.utils import package_version


def gpus() -> list[dict]:
    """This machine's NVIDIA GPUs through the CUDA driver ([] without one); torch-free."""
    try:
        from farl_edge.runtime.backends.tensorrt_backend import cuda_devices

        return cuda_devices()
    except Exception:  # noqa: BLE001 - no driver, no GPU: nothing to list
        return []


def environment(cpu: hardware.CpuInfo, threads: int, device: str = "cpu") -> dict:
    from farl_edge.export.manifest import library_versions

    versions = library_versions()
    for extra in ("psutil", "matplotlib", "coremltools", "tensorrt", "tensorrt-rtx-cu12-bindings"):
        if (version := package_version(extra)) is not None:
            versions[extra] = version
    if device == "cuda":
        try:
            import torch

            versions["torch_cuda"] = torch.version.cuda
        except ImportError:
            pass
    cores = hardware.cores_used(cpu, threads)
    return {"cpu": cpu.to_dict(), "isa": cpu.isa, "machine_class": cpu.machine_class(threads), "threads": threads,
            "cores_used": cores, "peak": hardware.peak_table(cpu, cores), "platform": platform.platform(),
            "device": device, "gpus": gpus(), "versions": versions}


# ----------------------------------------------------------------------------- entry point
def settings(cfg: BenchConfig) -> dict:
    return {"targets": cfg.targets, "precisions": cfg.precisions, "batches": cfg.batches, "stages": cfg.stages,
            "threads": cfg.threads, "device": cfg.device, "timing": cfg.policy.to_dict(), "eval_limit": cfg.eval_limit,
            "calib_size": cfg.calib_size, "onnx_int8_mode": cfg.onnx_int8_mode, "export_options": cfg.export_options,
            "export_eval_size": cfg.export_eval_size, "budget_s": cfg.budget_s,
            "data_root": str(cfg.data_root) if cfg.data_root else None,
            "measurement": "one fresh subprocess per row (peak RSS, cold start)"}


def dry_run(cfg: BenchConfig, rows: list[Row], skipped: list[dict]) -> dict:
    """The plan without running it: rows, the artifacts each exported row needs, the data found."""
    from farl_edge.bench import report
    from farl_edge.registry import get_config

    exports: dict[str, dict] = {}
    for r in rows:
        if r.target in TORCH_TARGETS or r.status != "planned":
            continue
        setting = export_setting(r.target, r.precision)
        dest = artifact_dir(cfg, r, setting.precision)
        exports.setdefault(dest.name, {"target": r.target, "precision": setting.precision, "stage": r.stage,
                                       "batch": r.batch, "cached": (dest / "manifest.json").is_file(),
                                       "export": export_kwargs(cfg, r.target, setting.precision)})
        r.data["artifact"] = dest.name
        if setting.runtime_options:
            r.data["runtime_options"] = setting.runtime_options
    models = {}
    for name in cfg.models:
        task = get_config(name).task
        found = {which: data_dir(task, which, cfg.data_root) for which in ("eval", "calib")}
        models[name] = {"task": task, **{f"{k}_data": str(v) if v else None for k, v in found.items()}}
    data = {"dry_run": True, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": cfg.command,
            "environment": {"platform": platform.platform(), "device": cfg.device, "gpus": gpus()},
            "settings": settings(cfg), "models": models, "rows": [r.to_dict() for r in rows],
            "not_measured": skipped, "exports": exports}
    report.write_plan(data, cfg.out)
    return data


def run_bench(cfg: BenchConfig) -> dict:
    """Run the whole matrix; returns the report dict (also written to ``cfg.out``)."""
    from farl_edge.bench import report

    log = cfg.log
    started = time.time()
    rows, skipped = plan(cfg)
    if cfg.dry_run:
        return dry_run(cfg, rows, skipped)
    cpu = hardware.detect_cpu(cfg.cpu_mhz)
    env = environment(cpu, cfg.threads, cfg.device)
    log(f"{cpu.model}: {cpu.isa}, {env['cores_used']} cores at {cpu.mhz:.0f} MHz ({cpu.mhz_source}), "
        f"{cfg.threads} threads" + "".join(f"; GPU {g['name']} ({g['compute_capability']})" for g in env["gpus"]))
    infos: dict[str, ModelInfo] = {}
    refs: dict = {}

    def spent() -> bool:
        return cfg.budget_s is not None and time.time() - started > cfg.budget_s

    def skip(r: Row) -> None:
        r.status, r.reason = "skipped", f"time budget of {cfg.budget_s:.0f} s spent before this row"

    for model in cfg.models:
        mine = [r for r in rows if r.model == model and r.status == "planned"]
        if spent():
            for r in rows:
                if r.model == model and r.status in ("planned", "derived"):
                    skip(r)
            log(f"{model}: skipped (time budget of {cfg.budget_s:.0f} s spent)")
            continue
        info = resolve_weights(cfg, model, log)
        infos[model] = info
        if cfg.export_only:
            for r in mine:
                if r.target in TORCH_TARGETS:
                    continue
                if spent():
                    skip(r)
                    continue
                try:
                    ensure_artifact(cfg, info, r, log)
                except Exception as e:  # noqa: BLE001 - one failed export does not stop filling the cache
                    log(f"  export failed: {type(e).__name__}: {e}"[:300])
            continue
        inputs = prepare_inputs(cfg, info)
        info_inputs = inputs["source"]
        # torch fp32 first (the reference), then the rest in plan order
        mine.sort(key=lambda r: (not (r.target == "torch" and r.precision == "fp32"), ))
        for r in mine:
            if spent():
                skip(r)
                continue
            try:
                measure_row(cfg, info, r, inputs, refs, log)
            except Exception as e:  # noqa: BLE001 - an export that crashes is a failed row, not a failed bench
                r.status, r.reason = "failed", f"{type(e).__name__}: {e}"[:500]
                log(f"  failed: {r.reason}")
        info.__dict__["inputs_source"] = info_inputs
    if cfg.export_only:
        return {"export_only": True, "cache": str(cfg.cache)}
    floors, cache = (measured_floors(rows, infos, cfg.threads, cfg.device, log) if cfg.measured_floor
                     else ({}, None))
    derive(rows, infos, cpu, cfg.threads, cfg.batches, cfg.device, floors)
    data = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": cfg.command,
        "environment": env,
        "settings": settings(cfg),
        "models": {n: {"task": i.cfg.task, "input_size": i.cfg.input_size, "weights": i.weights,
                       "gmacs": i.gmacs, "params_m": i.params_m, "eval_data": i.__dict__.get("inputs_source"),
                       "metric": METRIC.get(i.cfg.task, (None,))[0]} for n, i in infos.items()},
        "rows": [r.to_dict() for r in rows],
        "kernel_throughput": kernel_throughput(cache) if cache is not None else {},
        "not_measured": skipped,
        "seconds": round(time.time() - started, 1),
    }
    report.write_all(data, cfg.out)
    return data
