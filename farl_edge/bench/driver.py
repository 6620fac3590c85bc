"""Measuring one row: its inputs (real face crops saved as .npy), its spec, and a fresh
subprocess (:mod:`farl_edge.bench.worker`) that loads and times it; the result becomes the row's
measured columns."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from farl_edge.bench.artifacts import ensure_artifact
from farl_edge.bench.matrix import TORCH_COMPILE, BenchConfig, Row, backend_takes, export_setting
from farl_edge.bench.weights import ModelInfo


def _worker(spec: dict, workdir: Path, timeout: float, threads: int) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=workdir, delete=False) as f:
        json.dump(spec, f)
        spec_path = Path(f.name)
    result_path = spec_path.with_suffix(".result.json")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1",
           "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run([sys.executable, "-m", "farl_edge.bench.worker", str(spec_path), str(result_path)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"worker timed out after {timeout:.0f} s"}
    finally:
        spec_path.unlink(missing_ok=True)
    if not result_path.is_file():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        return {"ok": False, "error": f"worker exited {proc.returncode}: {' | '.join(tail)}"[:500]}
    result = json.loads(result_path.read_text())
    result_path.unlink(missing_ok=True)
    return result


def prepare_inputs(cfg: BenchConfig, info: ModelInfo) -> dict:
    """Real face crops for timing (the first max-batch faces) and the eval inputs, saved as .npy."""
    import numpy as np

    from farl_edge.export.calibration import open_faces

    folder = cfg.cache / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    n_eval = cfg.eval_limit
    need = max(max(cfg.batches), n_eval)
    timing_path = folder / f"{info.name}-timing-{max(cfg.batches)}.npy"
    eval_path = folder / f"{info.name}-eval-{n_eval}.npy"
    if info.eval_dir is None:
        x = np.random.default_rng(0).random((max(cfg.batches), 3, info.cfg.crop_size, info.cfg.crop_size),
                                            dtype=np.float32)
        np.save(timing_path, x)
        return {"timing": str(timing_path), "eval": None, "source": "random (no evaluation data found)"}
    faces = open_faces(info.eval_dir, n_eval if n_eval else max(cfg.batches), purpose="evaluation")
    x = faces.inputs(info.cfg)
    np.save(timing_path, x[:max(cfg.batches)] if len(x) >= max(cfg.batches) else x)
    if n_eval:
        np.save(eval_path, x[:n_eval])
    del need
    return {"timing": str(timing_path), "eval": str(eval_path) if n_eval else None,
            "source": f"{faces.source} ({len(faces)} of {faces.total} faces, evenly spaced)"}


def measure_row(cfg: BenchConfig, info: ModelInfo, row: Row, inputs: dict, refs: dict, log) -> None:
    spec = {"model": info.name, "checkpoint": info.checkpoint, "pretrained": info.pretrained, "target": row.target,
            "precision": row.precision, "stage": row.stage, "batch": row.batch, "threads": cfg.threads,
            "policy": cfg.policy.to_dict(), "timing_input": inputs["timing"]}
    if row.target == "torch":
        spec["device"] = cfg.device
        row.data["size_mb"] = info.param_bytes / 1e6
        if row.precision != "fp32":
            row.notes.append("autocast: weights stay fp32")
        elif cfg.device == "cuda":
            row.notes.append("CUDA, TF32 off")
    elif row.target == TORCH_COMPILE:
        spec["device"] = "cpu"
        row.data["size_mb"] = info.param_bytes / 1e6
        if row.precision == "int8":
            spec["calibration"] = {"data": str(info.calib_dir) if info.calib_dir else None, "size": cfg.calib_size}
            row.notes.append(f"PT2E int8 (X86InductorQuantizer), {cfg.calib_size} calibration faces")
        elif row.precision == "bf16":
            row.notes.append("torch.compile under autocast bf16")
    else:
        from farl_edge.export.formats import get_format

        backend = get_format(row.target).backend
        path, facts = ensure_artifact(cfg, info, row, log)
        spec["artifact"] = str(path)
        spec["backend"] = backend
        # threads only for the runtimes that take a thread count (the CPU ones), then the row's own options
        spec["runtime_options"] = {**({"threads": cfg.threads} if backend_takes(backend, "threads") else {}),
                                   **export_setting(row.target, row.precision).runtime_options}
        row.data.update({k: v for k, v in facts.items() if k != "artifact"})
        row.data["artifact"] = path.name
        if not facts["export_validation"].startswith("passed"):
            row.notes.append("export parity validation " + facts["export_validation"])
    first_batch = row.batch == cfg.batches[0]
    if cfg.eval_limit and first_batch and row.stage in ("full", "backbone") and info.eval_dir:
        ref_key = (info.name, row.stage)
        ev = {"data": info.eval_dir, "limit": cfg.eval_limit, "inputs": inputs["eval"], "batch_size": 8}
        if row.target == "torch" and row.precision == "fp32":
            ev["save_reference"] = str(cfg.cache / "inputs" / f"{info.name}-{row.stage}-reference.npz")
            refs[ref_key] = ev["save_reference"]
        elif ref_key in refs:
            ev["reference"] = refs[ref_key]
        spec["eval"] = ev
    log(f"measure {info.name} {row.target} {row.precision} {row.stage} b{row.batch}")
    result = _worker(spec, cfg.cache / "work", cfg.worker_timeout, cfg.threads)
    if not result.get("ok"):
        row.status, row.reason = "failed", result.get("error", "unknown error")
        log(f"  failed: {row.reason}")
        return
    row.status = "ok"
    t = result["timing"]
    row.data.update({
        "median_ms": t["median_ms"], "p90_ms": t["p90_ms"], "p99_ms": t["p99_ms"], "mean_ms": t["mean_ms"],
        "min_ms": t["min_ms"], "iters": t["iters"], "stable": t["stable"], "timing_s": t["timing_s"],
        "fps": 1000.0 * row.batch / t["median_ms"], "cold_start_ms": result["cold_start_ms"],
        "load_ms": result["load_ms"], "first_ms": result["first_ms"], "import_ms": result["import_ms"],
        "peak_rss_mb": result["peak_rss_mb"], "rss_baseline_mb": result["rss_baseline_mb"],
        "rss_after_load_mb": result["rss_after_load_mb"], "samples_ms": t["samples_ms"],
    })
    if result.get("peak_gpu_mb") is not None:
        row.data["peak_gpu_mb"] = result["peak_gpu_mb"]
    if "session" in result:
        row.data["session"] = result["session"]
        used = result["session"].get("inference_precision_used")
        if used:
            row.notes.append(f"OpenVINO inference precision used: {used}")
    for key in ("metrics", "cosine", "landmark_shift_px", "eval_faces", "eval_s"):
        if key in result:
            row.data[key] = result[key]
    if "eval" in spec and spec["eval"].get("save_reference"):
        row.data["cosine"] = {"output": "reference", "mean": 1.0, "min": 1.0}
    log(f"  median {t['median_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms ({t['iters']} iters)"
        + (f", cosine {result['cosine']['mean']:.6f}" if "cosine" in result else ""))
