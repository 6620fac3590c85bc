"""One prepared GPU check: PyTorch CUDA baselines and TensorRT engines, validated on real faces.

Runs what the machine has, in budget order (each step is skipped, with the reason, when its
library is missing or the time budget is spent), and writes ``report.json`` + ``report.md``:

1. environment: GPU, driver, torch / CUDA, TensorRT flavours that import;
2. per model — ``farl-small-300w`` (the shipped trained weights when the package has them),
   ``farl-b16-lapa-448`` (parsing) and ``farl-b16-300w-448`` (alignment) with **random weights**
   (FaRL weights are not redistributable here: speed is real, task accuracy is meaningless, parity
   is still meaningful) — PyTorch on CUDA: fp32 (TF32 off: the reference), fp16 and bf16 autocast,
   and ``torch.compile`` (fp16 autocast); each validated against the fp32 reference on real faces
   (cosine, max |Δ| relative) and timed at batch 1 and 8 (CUDA events, median and p99 after warm-up);
3. TensorRT (``tensorrt`` or ``tensorrt_rtx_bindings``, whichever imports): plain ONNX →
   fp16 graph → engine for this GPU → run through farl-edge's TensorRT backend; validated the same
   way; timed end to end (host→device copy, execution, device→host copy: what an app sees).

Faces: ``faces/`` beside this script (staged with ``--stage``: a few 300-W test-helen images with
their landmarks, copied from ../shared/data; git-ignored, carried to the GPU machine, never
committed). ``--dry-run`` checks the CPU side (imports, faces, plan) without a GPU.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED_FACES = ROOT.parent / "shared" / "data" / "300w" / "test-helen"
MODELS = [("farl-small-300w", "shipped weights if packaged, else random"),
          ("farl-b16-lapa-448", "random weights"), ("farl-b16-300w-448", "random weights")]
BATCHES = (1, 8)


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def allow(self, need: float) -> bool:
        return self.left() > need


# --------------------------------------------------------------------------------------------
# staging (here) and faces (there)
# --------------------------------------------------------------------------------------------

def stage(count: int, build_wheel: bool) -> None:
    """Copy ``count`` faces (+ .pts) into faces/, and build the project wheel into wheels/."""
    if not SHARED_FACES.is_dir():
        raise SystemExit(f"no faces at {SHARED_FACES}")
    faces = HERE / "faces"
    shutil.rmtree(faces, ignore_errors=True)
    faces.mkdir()
    images = sorted(SHARED_FACES.glob("*.jpg"))
    for i in np.linspace(0, len(images) - 1, count).round().astype(int):
        for suffix in (".jpg", ".pts"):
            src = images[i].with_suffix(suffix)
            if src.exists():
                shutil.copy2(src, faces / src.name)
    print(f"staged {count} faces from {SHARED_FACES} into {faces}")
    if build_wheel:
        import subprocess

        wheels = HERE / "wheels"
        shutil.rmtree(wheels, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(wheels), str(ROOT)], check=True)
        print(f"built {[p.name for p in wheels.glob('*.whl')]} into {wheels}")


def load_faces(folder: Path, cfg, limit: int = 8) -> tuple[np.ndarray, str]:
    """(N, 3, S, S) float32 crops prepared as at inference; falls back to whole images resized."""
    try:
        from farl_edge import crops
        from farl_edge.datasets import open_dataset
        from farl_edge.evaluate import prepare

        samples = list(open_dataset(folder, "300w"))[:limit]
        return crops.to_tensor_layout(np.stack([prepare(s, cfg)[0] for s in samples])), "farl-edge crops (300-W)"
    except Exception as e:  # noqa: BLE001 - no cv2 / no annotations: plain resize
        from PIL import Image

        images = sorted(folder.glob("*.jpg"))[:limit]
        if not images:
            raise SystemExit(f"no faces in {folder}: stage them with --stage") from e
        arr = [np.asarray(Image.open(p).convert("RGB").resize((cfg.input_size, cfg.input_size))) for p in images]
        return np.stack(arr).transpose(0, 3, 1, 2).astype(np.float32) / 255.0, f"whole images resized ({e})"


def compare(ref: dict, got: dict) -> dict:
    out = {}
    for name, r in ref.items():
        g = np.asarray(got[name], np.float64).ravel()
        r = np.asarray(r, np.float64).ravel()
        cos = float(r @ g / (np.linalg.norm(r) * np.linalg.norm(g) + 1e-30))
        out[name] = {"cosine": round(cos, 7),
                     "max_abs_rel": float(np.abs(r - g).max() / (np.abs(r).max() or 1.0))}
    return out


# --------------------------------------------------------------------------------------------
# PyTorch CUDA
# --------------------------------------------------------------------------------------------

def time_cuda(fn, x, warmup: int, iters: int) -> dict:
    """CUDA events around each call (perf_counter on a CPU tensor: the --device cpu smoke run)."""
    import torch

    cuda = x.is_cuda
    for _ in range(warmup):
        fn(x)
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if not cuda:
            t = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t) * 1e3)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return {"median_ms": round(statistics.median(times), 3),
            "p99_ms": round(times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))], 3), "iters": iters}


def torch_modes(model_name: str, faces_dir: Path, budget: Budget, iters: int, report: dict,
                device: str = "cuda") -> None:
    import torch

    from farl_edge.models import create_model
    from farl_edge.registry import get_config, weights_path

    cfg = get_config(model_name)
    weights = "shipped" if weights_path(cfg) else "random"
    torch.manual_seed(0)
    model = create_model(model_name).to(device).eval()
    faces, how = load_faces(faces_dir, cfg)
    entry = report.setdefault("models", {}).setdefault(model_name, {})
    entry.update(weights=weights, faces=how, face_count=int(len(faces)))
    entry.setdefault("torch", {})
    names = model.output_names
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    def runner(dtype=None, fn=None):
        f = fn or model

        @torch.inference_mode()
        def run(x):
            with torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                out = f(x)
            return out if isinstance(out, tuple) else (out,)
        return run

    x_faces = torch.from_numpy(faces).to(device)
    ref_fn = runner()
    ref = {n: t.float().cpu().numpy() for n, t in zip(names, ref_fn(x_faces))}
    modes = [("fp32", None, False), ("fp16-autocast", torch.float16, False), ("bf16-autocast", torch.bfloat16, False),
             ("compile-fp16", torch.float16, True)]
    if device == "cpu":  # smoke run of this code path: no fp16 autocast / compile on CPU
        modes = [m for m in modes if m[0] in ("fp32", "bf16-autocast")]
    for mode, dtype, compiled in modes:
        need = 150 if compiled else 20
        if not budget.allow(need):
            entry["torch"][mode] = {"skipped": f"time budget ({budget.left():.0f} s left, needs ~{need} s)"}
            continue
        try:
            t0 = time.perf_counter()
            fn = runner(dtype, torch.compile(model, mode="max-autotune-no-cudagraphs") if compiled else None)
            got = {n: t.float().cpu().numpy() for n, t in zip(names, fn(x_faces))}
            res = {"parity_vs_fp32": compare(ref, got), "first_call_s": round(time.perf_counter() - t0, 1)}
            for b in BATCHES:
                x = torch.rand(b, 3, cfg.input_size, cfg.input_size, device=device)
                res[f"batch{b}"] = time_cuda(fn, x, warmup=min(iters, 5 if compiled else 10), iters=iters)
            entry["torch"][mode] = res
        except Exception as e:  # noqa: BLE001 - report and go on
            entry["torch"][mode] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(f"  {model_name} torch {mode}: {json.dumps(entry['torch'][mode])[:200]}", flush=True)
    entry["_reference"] = ref
    del model
    torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# TensorRT
# --------------------------------------------------------------------------------------------

def trt_flavour() -> str | None:
    for flavour, module in (("tensorrt", "tensorrt"), ("tensorrt-rtx", "tensorrt_rtx_bindings")):
        if importlib.util.find_spec(module) is not None:
            try:
                importlib.import_module(module)
                return flavour
            except Exception:  # noqa: BLE001
                continue
    return None


def tensorrt_model(model_name: str, faces_dir: Path, budget: Budget, iters: int, report: dict,
                   precision: str = "fp16") -> None:
    import torch

    from farl_edge.export import onnx_export, tensorrt_build, tensorrt_prepare
    from farl_edge.export.config import export_config
    from farl_edge.models import create_model
    from farl_edge.registry import get_config
    from farl_edge.runtime.backends.tensorrt_backend import TensorRTRunner

    entry = report["models"].setdefault(model_name, {})
    flavour = trt_flavour()
    key = f"{flavour}-{precision}"
    cfg = get_config(model_name)
    need = 60 if cfg.input_size <= 224 else 200
    if not budget.allow(need):
        entry.setdefault("tensorrt", {})[key] = {"skipped": f"time budget ({budget.left():.0f} s left)"}
        return
    res: dict = {}
    entry.setdefault("tensorrt", {})[key] = res
    try:
        torch.manual_seed(0)
        model = create_model(model_name).eval()
        work = Path(tempfile.mkdtemp(prefix="gpu-check-trt-"))
        t0 = time.perf_counter()
        raw = onnx_export.torch2onnx(model, work / "raw.onnx", export_config(cfg, batch=None))
        import onnx

        plain = work / "plain.onnx"
        onnx_export.save_onnx(onnx.load(str(raw)), plain)
        res["export_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        prepared = work / f"{precision}.onnx"
        res["prepared"] = {k: v for k, v in tensorrt_prepare.prepare(precision, plain, prepared).items() if k != "ops"}
        res["prepare_s"] = round(time.perf_counter() - t0, 1)
        record = tensorrt_build.build_engine(
            prepared, work / "model.engine", flavour=tensorrt_build.load_flavour(flavour), precision=precision,
            header={"model": model_name, "input_size": cfg.input_size}, batch=None, max_batch=8, opt_batch=8,
            compute_capabilities="current", log_path=work / "build.log", log=lambda m: print("  " + m, flush=True))
        res["engine"] = {k: record[k] for k in ("build_s", "engine_bytes", "compute_capabilities", "batch", "version")}
        runner = TensorRTRunner(work / "model.engine")
        faces, _ = load_faces(faces_dir, cfg)
        ref = entry.get("torch_reference")
        if ref is None:
            with torch.inference_mode():
                out = model(torch.from_numpy(faces))
            ref = {n: t.float().numpy() for n, t in zip(model.output_names, out if isinstance(out, tuple) else (out,))}
        got = {}
        for i in range(len(faces)):  # batch 1 calls, also exercises the profile's minimum
            for n, v in runner.run(faces[i:i + 1]).items():
                got.setdefault(n, []).append(v)
        res["parity_vs_fp32"] = compare(ref, {n: np.concatenate(v) for n, v in got.items()})
        for b in BATCHES:
            x = np.random.default_rng(0).random((b, 3, cfg.input_size, cfg.input_size), dtype=np.float32)
            for _ in range(10):
                runner.run(x)
            times = []
            for _ in range(iters):
                t = time.perf_counter()
                runner.run(x)
                times.append((time.perf_counter() - t) * 1e3)
            times.sort()
            res[f"batch{b}_end_to_end"] = {"median_ms": round(statistics.median(times), 3),
                                           "p99_ms": round(times[min(len(times) - 1, int(0.99 * (len(times) - 1)))], 3),
                                           "iters": iters}
        shutil.copy2(work / "build.log", Path(report["_out"]) / f"build-{model_name}-{key}.log")
    except Exception as e:  # noqa: BLE001
        res["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        res["traceback"] = traceback.format_exc()[-1500:]
    print(f"  {model_name} {key}: {json.dumps({k: v for k, v in res.items() if k != 'traceback'})[:300]}", flush=True)


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------

def environment() -> dict:
    env = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["cuda"] = torch.version.cuda
            env["compute_capability"] = "sm%d%d" % torch.cuda.get_device_capability(0)
    except ImportError as e:
        env["torch"] = f"not importable ({e})"
    from farl_edge.runtime.backends.tensorrt_backend import cuda_devices, flavour_version

    env["cuda_devices"] = cuda_devices()
    env["tensorrt"] = flavour_version("tensorrt")
    env["tensorrt_rtx"] = flavour_version("tensorrt-rtx")
    for mod in ("onnx", "onnxruntime", "cv2"):
        try:
            env[mod] = getattr(importlib.import_module(mod), "__version__", "?")
        except ImportError:
            env[mod] = None
    return env


def write_report(report: dict, out: Path) -> None:
    for m in report.get("models", {}).values():
        m.pop("_reference", None)
        m.pop("torch_reference", None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({k: v for k, v in report.items() if not k.startswith("_")},
                                                indent=2, default=str))
    lines = ["# farl-edge GPU check", "", f"- date: {report['date']}", f"- dry run: {report['dry_run']}",
             f"- seconds: {report.get('seconds')}", ""]
    env = report["environment"]
    lines += ["## Environment", ""] + [f"- {k}: {v}" for k, v in env.items()] + [""]
    lines += ["## Results", "", "Latency: median / p99 ms; torch = CUDA events around the forward; TensorRT = end to "
              "end through the runtime (copies included). Parity: min cosine over outputs vs PyTorch fp32 (TF32 off).",
              "", "| model | weights | path | parity cosine | b1 median | b1 p99 | b8 median | b8 p99 | note |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in report.get("models", {}).items():
        rows = [(f"torch {k}", v) for k, v in m.get("torch", {}).items()]
        rows += [(f"{k} engine", v) for k, v in m.get("tensorrt", {}).items()]
        for path, r in rows:
            par = r.get("parity_vs_fp32")
            cos = f"{min(o['cosine'] for o in par.values()):.6f}" if par else "-"
            b1 = r.get("batch1") or r.get("batch1_end_to_end") or {}
            b8 = r.get("batch8") or r.get("batch8_end_to_end") or {}
            note = r.get("skipped") or r.get("error") or (
                f"engine {r['engine']['engine_bytes'] / 1e6:.1f} MB in {r['engine']['build_s']} s" if "engine" in r else "")
            lines.append(f"| {name} | {m.get('weights', '-')} | {path} | {cos} | {b1.get('median_ms', '-')} | "
                         f"{b1.get('p99_ms', '-')} | {b8.get('median_ms', '-')} | {b8.get('p99_ms', '-')} | {note} |")
    for note in report.get("notes", []):
        lines.append(f"\n- {note}")
    (out / "report.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE / "out"), help="report folder")
    p.add_argument("--faces", default=str(HERE / "faces"), help="300-W style faces (jpg + pts)")
    p.add_argument("--budget-s", type=float, default=420, help="stop starting new steps after this many seconds")
    p.add_argument("--iters", type=int, default=100, help="timed iterations per measurement")
    p.add_argument("--models", default=",".join(m for m, _ in MODELS))
    p.add_argument("--dry-run", action="store_true", help="check the CPU side only (imports, faces, plan)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: smoke-run the PyTorch path here (fp32 + bf16, tiny iteration counts)")
    p.add_argument("--stage", type=int, metavar="N", help="copy N faces into faces/ and build the wheel, then exit")
    p.add_argument("--no-wheel", action="store_true", help="with --stage: faces only")
    args = p.parse_args(argv)
    if args.stage:
        stage(args.stage, not args.no_wheel)
        return 0
    started = time.time()
    budget = Budget(args.budget_s)
    out = Path(args.out)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": args.dry_run, "environment": environment(),
              "models": {}, "notes": [], "_out": str(out)}
    out.mkdir(parents=True, exist_ok=True)
    faces_dir = Path(args.faces)
    names = [m for m in args.models.split(",") if m]
    from farl_edge.registry import get_config

    for name in names:
        cfg = get_config(name)
        faces, how = load_faces(faces_dir, cfg)
        report["models"][name] = {"weights": dict(MODELS).get(name, "registry"), "faces": how,
                                  "face_count": int(len(faces)), "input_size": cfg.input_size}
    gpu = bool(report["environment"].get("cuda_available"))
    flavour = trt_flavour()
    plan = [f"torch {m} {mode}" for m in names for mode in ("fp32", "fp16-autocast", "bf16-autocast", "compile-fp16")]
    plan += [f"{flavour} fp16 engine {m}" for m in names] if flavour else ["TensorRT: not importable, skipped"]
    report["plan"] = plan
    if args.device == "cpu" and not args.dry_run:
        for name in names:
            torch_modes(name, faces_dir, budget, args.iters, report, device="cpu")
        report["notes"].append("CPU smoke run of the PyTorch path (--device cpu): not a GPU measurement")
    elif args.dry_run or not gpu:
        why = "dry run" if args.dry_run else "no CUDA GPU visible to torch"
        report["notes"].append(f"nothing run on a GPU: {why}; plan: " + "; ".join(plan))
        import farl_edge.export.tensorrt_build  # noqa: F401 - the CPU-side imports the GPU run needs
        import farl_edge.export.tensorrt_prepare  # noqa: F401
    else:
        for name in names:
            print(f"== {name}", flush=True)
            try:
                torch_modes(name, faces_dir, budget, args.iters, report)
                report["models"][name]["torch_reference"] = report["models"][name].pop("_reference", None)
            except Exception as e:  # noqa: BLE001
                report["models"][name]["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        if flavour:
            for name in names:
                tensorrt_model(name, faces_dir, budget, args.iters, report)
        else:
            report["notes"].append("TensorRT: neither tensorrt nor tensorrt_rtx_bindings imports here")
    report["notes"].append("FaRL-B/16 models run with random weights (speed and parity are real, task accuracy "
                           "is not); farl-small-300w uses the packaged trained weights when present")
    report["seconds"] = round(time.time() - started, 1)
    write_report(report, out)
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
