"""One benchmark row, measured in a fresh process: ``python -m farl_edge.bench.worker SPEC.json RESULT.json``.

A fresh process per row makes the peak RSS and the cold start honest: nothing of another backend
(or of torch, for the exported rows: this module imports torch only for torch rows) is loaded.

Order inside the process:
1. baseline RSS (python, numpy, cv2, farl_edge's torch-free modules);
2. import of the backend library (``import_ms``: torch, or the runtime backend of the artifact's
   manifest and the library its runner uses);
3. load (``load_ms``: ``farl_edge.runtime.load`` with its default sha256 check of the files, or
   ``create_model`` + weights for torch) and the first inference (``first_ms``):
   ``cold_start_ms = load_ms + first_ms`` (files are in the OS page cache: a warm-disk cold start);
4. the adaptive timing loop (:mod:`farl_edge.bench.timing`) on real face crops. PyTorch rows run on
   ``spec["device"]`` (cpu, or cuda: fp32 with TF32 off, fp16 / bf16 autocast; the whole model
   numpy in, numpy out like the artifacts, the stages synchronised after each call);
5. peak RSS = the kernel's high-water mark (``getrusage`` ru_maxrss) at this point, i.e. over
   load, first inference and timing; ``psutil`` gives the baseline and after-load RSS;
6. accuracy (only when the spec asks): the task metric through :func:`farl_edge.evaluate.evaluate`
   with every batch of outputs recorded, plus the per-face cosine of the main output against the
   PyTorch fp32 reference outputs saved by the reference row.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

MAIN_OUTPUT = {"parsing": "logits", "alignment": "heatmaps", "backbone": "embedding"}


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Recorder:
    """Predictor wrapper that keeps every output batch (for the cosine against the reference)."""

    def __init__(self, predictor, keep=None):
        self.predictor = predictor
        self.config = predictor.config
        self.keep = keep
        self.outputs: dict[str, list] = {}

    def __call__(self, batch):
        out = self.predictor(batch)
        for k, v in out.items():
            if self.keep is None or k in self.keep:
                self.outputs.setdefault(k, []).append(np.asarray(v, np.float32))
        return out

    def stacked(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.outputs.items()}


def _torch_setup(spec):
    import torch

    torch.set_num_threads(int(spec["threads"]))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    return torch


AUTOCAST = {"bf16": "bfloat16", "fp16": "float16"}


def _open_torch(spec):
    """(predictor for eval, timed fn factory) for a torch row, on ``spec["device"]`` (cpu or cuda)."""
    torch = _torch_setup(spec)
    from farl_edge.models import create_model
    from farl_edge.models.predictor import TorchPredictor

    device = spec.get("device") or "cpu"
    model = create_model(spec["model"], checkpoint=spec.get("checkpoint"), pretrained=bool(spec.get("pretrained", True)))
    if device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: the reference
        torch.backends.cudnn.allow_tf32 = False
        model = model.to(device)
    dtype = getattr(torch, AUTOCAST[spec["precision"]]) if spec["precision"] in AUTOCAST else None
    stage = spec["stage"]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def ctx():
        import contextlib

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None))
        return stack

    def tensor(batch):
        return torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(device)

    if stage == "full":
        if device == "cpu":
            predictor = TorchPredictor(model, dtype=dtype)
        else:
            class DevicePredictor:  # numpy in, numpy out: host↔device copies timed, as for TensorRT
                config = model.cfg

                def __call__(self, batch):
                    with ctx():
                        out = model(tensor(batch))
                    out = out if isinstance(out, tuple) else (out,)
                    return {n: t.float().cpu().numpy() for n, t in zip(model.output_names, out)}
            predictor = DevicePredictor()

        def make_fn(batch):
            return lambda: predictor(batch)
        return predictor, make_fn

    class BackbonePredictor:  # eval of the backbone stage: the embedding, as the exported backbone gives
        config = model.cfg

        def __call__(self, batch):
            with ctx():
                emb = model.backbone(model.normalize(tensor(batch)))
            return {"embedding": emb.float().cpu().numpy()}

    def make_fn(batch):
        x = tensor(batch)
        if stage == "backbone":
            def fn():
                with ctx():
                    out = model.features(x)
                sync()
                return out
            return fn
        with ctx():
            feats = [f.clone() for f in model.features(x)]

        def fn():
            with ctx():
                out = model.head(feats)
            sync()
            return out
        return fn

    return BackbonePredictor(), make_fn


def _open_torch_compile(spec):
    """(predictor, timed fn factory) for a torch-compile row: the whole model through inductor
    (weights frozen into the graph); bf16 under autocast; int8 by PT2E quantisation with the x86
    inductor quantiser, calibrated on the calibration faces, exported with a dynamic batch axis."""
    torch = _torch_setup(spec)
    import torch._inductor.config as inductor_config

    from farl_edge.models import create_model

    inductor_config.freezing = True  # constant-fold the weights (and prepack int8 ones), as deployed
    model = create_model(spec["model"], checkpoint=spec.get("checkpoint"), pretrained=bool(spec.get("pretrained", True)))
    model = model.eval()
    cfg, names = model.cfg, model.output_names
    dtype = torch.bfloat16 if spec["precision"] == "bf16" else None
    s = cfg.crop_size
    with torch.no_grad():
        if spec["precision"] == "int8":
            module = _pt2e_int8(torch, model, spec.get("calibration") or {})
        else:
            module = model
        compiled = torch.compile(module)

    class CompiledPredictor:
        config = cfg

        def __call__(self, batch):
            x = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                out = compiled(x)
            out = out if isinstance(out, tuple) else (out,)
            return {n: t.float().numpy() for n, t in zip(names, out)}

    predictor = CompiledPredictor()
    predictor(np.zeros((1, 3, s, s), np.float32))  # compile outside the timed first call's batch shape

    def make_fn(batch):
        return lambda: predictor(batch)
    return predictor, make_fn


def _pt2e_int8(torch, model, calibration: dict):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    from farl_edge.export.calibration import calibration_set

    faces = calibration_set(model.cfg, calibration.get("data"), int(calibration.get("size") or 32))
    x = torch.from_numpy(faces.inputs(model.cfg))
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (x[:2],), dynamic_shapes=({0: batch},)).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    for start in range(0, len(x), 8):
        prepared(x[start:start + 8])
    return convert_pt2e(prepared)


def _open_artifact(spec):
    from farl_edge.runtime import load

    session = load(spec["artifact"], allow_failed=True, **(spec.get("runtime_options") or {}))

    def make_fn(batch):
        batch = np.ascontiguousarray(batch, np.float32)
        return lambda: session(batch)
    return session, make_fn


# runtime backend → the library its runner imports (timed as import_ms, apart from the load)
BACKEND_LIBRARIES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "coreml": "coremltools"}


def _import_backend(spec: dict) -> None:
    import importlib
    import importlib.util

    if spec["target"] in ("torch", "torch-compile"):
        import torch  # noqa: F401
        return
    from farl_edge.runtime.backends import BACKENDS

    backend = spec.get("backend")
    if backend not in BACKENDS:
        return
    module = importlib.import_module(BACKENDS[backend])
    library = BACKEND_LIBRARIES.get(backend)
    if backend == "tensorrt":  # the flavour the engine was built with
        try:
            flavour = json.loads((Path(spec["artifact"]) / "manifest.json").read_text())["build"]["flavour"]
            library = module.FLAVOURS[flavour][0]
        except (OSError, KeyError, ValueError):
            library = None
    if library and importlib.util.find_spec(library) is not None:  # else the load says what is missing
        importlib.import_module(library)


def run(spec: dict) -> dict:
    from farl_edge.bench.timing import TimingPolicy, measure

    result: dict = {"rss_baseline_mb": _rss_mb()}
    t0 = time.perf_counter()
    _import_backend(spec)
    result["import_ms"] = (time.perf_counter() - t0) * 1e3
    result["rss_after_import_mb"] = _rss_mb()

    batch_size = int(spec["batch"])
    timing_input = np.load(spec["timing_input"])[:batch_size]
    if len(timing_input) < batch_size:  # fewer prepared faces than the batch: repeat them
        reps = -(-batch_size // len(timing_input))
        timing_input = np.concatenate([timing_input] * reps)[:batch_size]

    t0 = time.perf_counter()
    if spec["target"] == "torch":
        predictor, make_fn = _open_torch(spec)
    elif spec["target"] == "torch-compile":
        predictor, make_fn = _open_torch_compile(spec)
    else:
        predictor, make_fn = _open_artifact(spec)
        result["session"] = getattr(predictor, "info", {})
    result["load_ms"] = (time.perf_counter() - t0) * 1e3
    fn = make_fn(timing_input)
    t0 = time.perf_counter()
    fn()
    result["first_ms"] = (time.perf_counter() - t0) * 1e3
    result["cold_start_ms"] = result["load_ms"] + result["first_ms"]
    result["rss_after_load_mb"] = _rss_mb()

    timing = measure(fn, TimingPolicy(**spec["policy"]))
    result["timing"] = timing.to_dict()
    result["peak_rss_mb"] = _peak_rss_mb()
    if spec["target"] == "torch" and spec.get("device") == "cuda":
        import torch

        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20

    ev = spec.get("eval")
    if ev:
        result.update(_accuracy(spec, ev, predictor))
    return result


def _accuracy(spec: dict, ev: dict, predictor) -> dict:
    from farl_edge.export.calibration import open_faces
    from farl_edge.export.validate import cosine

    out: dict = {}
    task = predictor.config.task if spec["stage"] == "full" else "backbone"
    main = MAIN_OUTPUT[task]
    t0 = time.perf_counter()
    if task == "backbone":
        inputs = np.load(ev["inputs"])
        rec = Recorder(predictor, keep={main})
        step = int(ev.get("batch_size") or 8)
        for start in range(0, len(inputs), step):
            rec(inputs[start:start + step])
    else:
        from farl_edge.evaluate import evaluate

        faces = open_faces(ev["data"], int(ev["limit"]), purpose="evaluation")
        rec = Recorder(predictor, keep={main, "landmarks"})
        metrics = evaluate(rec, faces.samples, batch_size=int(ev.get("batch_size") or 8), progress=False)
        out["metrics"] = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
        out["eval_faces"] = len(faces)
    outputs = rec.stacked()
    if ev.get("save_reference"):
        np.savez(ev["save_reference"], **outputs)
    if ev.get("reference") and Path(ev["reference"]).is_file():
        ref = np.load(ev["reference"])
        if main in ref.files and main in outputs and len(ref[main]) == len(outputs[main]):
            cos = [cosine(r, c) for r, c in zip(ref[main], outputs[main])]
            out["cosine"] = {"output": main, "mean": float(np.mean(cos)), "min": float(np.min(cos)), "faces": len(cos)}
            if "landmarks" in ref.files and "landmarks" in outputs:
                d = np.linalg.norm(ref["landmarks"] - outputs["landmarks"], axis=-1)
                out["landmark_shift_px"] = {"mean": float(d.mean()), "max": float(d.max())}
    out["eval_s"] = round(time.perf_counter() - t0, 2)
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m farl_edge.bench.worker SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        result = {"ok": True, **run(spec)}
    except Exception as e:  # noqa: BLE001 - reported in the row, never silently dropped
        import traceback

        result = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500], "traceback": traceback.format_exc()[-4000:]}
    Path(argv[1]).write_text(json.dumps(result, default=float))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
