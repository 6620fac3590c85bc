"""`farl-edge bench` over every export format of the formats table, on a CPU-only machine.

Availability, the export and the measurement are stubbed (a fake export writes a manifest, a fake
worker returns a timing), so plan → ensure_artifact → measure → derive → report runs for the
TensorRT, TensorRT-RTX and Core ML rows as it would on the machines that run them; the worker is
run in-process with the runtime stubbed. The presets (gpu, mac) and the dry run are checked on the
CPU; the real GPU / Mac runs skip, naming the hardware they need. One real OpenVINO run checks the
bench-side runtime variants (fp32 / bf16 hint on one fp32 IR).
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from farl_edge.bench import artifacts, driver, matrix, runner, weights
from farl_edge.export.formats import FORMATS, Format

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_fixtures import fallback_checkpoint  # noqa: E402

MODEL = "farl-small-300w"


def _timing(median: float) -> dict:
    return {"median_ms": median, "p90_ms": median * 1.1, "p99_ms": median * 1.2, "mean_ms": median,
            "min_ms": median * 0.9, "iters": 3, "stable": True, "timing_s": 0.1, "samples_ms": [median] * 3}


class Stubs:
    """Fake export (writes a manifest as the pipeline does) and fake worker (returns a timing)."""

    def __init__(self, tmp_path):
        self.exports: list[dict] = []
        self.specs: list[dict] = []
        self.tmp = tmp_path

    def resolve_weights(self, cfg, name, log):
        from farl_edge.registry import get_config

        return weights.ModelInfo(name, get_config(name), None, False, "stub weights",
                                {"total": 2.0, "backbone": 1.5, "head": 0.5}, 1.0, 4_000_000, None, None)

    def export(self, request):
        """The pipeline's contract as the bench uses it, checked against the formats table."""
        from farl_edge.export.request import ExportRequest
        from farl_edge.registry import get_config

        assert isinstance(request, ExportRequest)
        target, precision, model, batch = request.target, request.precision, request.model, request.batch
        fmt = FORMATS[target]
        assert precision in fmt.precisions, (target, precision)
        assert set(request.options) <= set(fmt.options), request.options
        kwargs = {"options": request.options} if request.options else {}
        if precision == "int8":
            assert request.int8_mode in fmt.int8_modes, request
            kwargs["int8_mode"] = request.int8_mode
        else:
            assert request.int8_mode == ExportRequest(model=model).int8_mode  # left at its default
        name = model if isinstance(model, str) else model.cfg.base
        out = Path(request.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.bin").write_bytes(b"\0" * 2000)
        manifest = {"status": "ok", "model": get_config(name).to_dict(), "target": target, "precision": precision,
                    "backend": fmt.backend, "files": {"model.bin": {"bytes": 2000}}, "build": {}}
        (out / "manifest.json").write_text(json.dumps(manifest))
        self.exports.append({"target": target, "precision": precision, "batch": batch, "dir": out.name, **kwargs})

    def worker(self, spec, workdir, timeout, threads):
        self.specs.append(spec)
        if spec["target"] != "torch":
            manifest = json.loads((Path(spec["artifact"]) / "manifest.json").read_text())
            assert manifest["backend"] == spec["backend"] == FORMATS[spec["target"]].backend
        median = {"full": 10.0, "backbone": 6.0, "head": 3.0}[spec["stage"]] * spec["batch"]
        return {"ok": True, "timing": _timing(median), "cold_start_ms": 5.0, "load_ms": 4.0, "first_ms": 1.0,
                "import_ms": 1.0, "peak_rss_mb": 100.0, "rss_baseline_mb": 50.0, "rss_after_load_mb": 80.0}


@pytest.fixture
def stubs(monkeypatch, tmp_path):
    from farl_edge.export import pipeline

    s = Stubs(tmp_path)
    monkeypatch.setattr(matrix, "target_availability", lambda target, device="cpu": (True, ""))
    monkeypatch.setattr(runner, "resolve_weights", s.resolve_weights)
    monkeypatch.setattr(runner, "prepare_inputs", lambda cfg, info: {"timing": "-", "eval": None, "source": "stub"})
    monkeypatch.setattr(driver, "_worker", s.worker)
    monkeypatch.setattr(artifacts, "backbone_module", lambda info: type("M", (), {"cfg": type("C", (), {
        "base": info.name})()})())
    monkeypatch.setattr(pipeline, "export", s.export)
    return s


def test_every_format_plans_exports_and_measures(stubs, tmp_path):
    """Each precision of each format in FORMATS (tensorrt, tensorrt-rtx, coreml included) becomes
    ok rows: full at every batch, backbone measured, head derived — no KeyError anywhere."""
    assert {"tensorrt", "tensorrt-rtx", "coreml", "onnx", "openvino"} <= set(FORMATS)
    cfg = matrix.BenchConfig(models=[MODEL], targets=list(FORMATS), precisions=list(matrix.known_precisions()),
                             batches=[1, 2], out=tmp_path / "out", log=lambda m: None)
    data = runner.run_bench(cfg)
    rows = {(r["target"], r["precision"], r["stage"], r["batch"]): r for r in data["rows"]}
    for target, fmt in FORMATS.items():
        for precision in fmt.precisions:
            for key in ((target, precision, "full", 1), (target, precision, "full", 2),
                        (target, precision, "backbone", 1)):
                assert rows[key]["status"] == "ok", rows[key]
                assert rows[key]["median_ms"] > 0 and rows[key]["export_validation"] == "passed"
            head = rows[(target, precision, "head", 1)]
            assert head["status"] == "derived" and head["median_ms"] == pytest.approx(4.0)
            full = rows[(target, precision, "full", 1)]
            assert full["x_torch"] == pytest.approx(1.0)
            # the floor is this CPU's: only rows that run on it have one
            assert ("floor_ms" in full) == fmt.notes.get("run_needs", "CPU").startswith("CPU"), target
    assert not [r for r in data["rows"] if r["status"] not in ("ok", "derived")]
    # OpenVINO bf16 = the fp32 IR with the bf16 hint: one artifact for both rows
    assert rows[("openvino", "bf16", "full", 1)]["artifact"] == rows[("openvino", "fp32", "full", 1)]["artifact"]
    by_row = {(s["target"], s["precision"], s["stage"], s["batch"]): s for s in stubs.specs}
    assert by_row[("openvino", "bf16", "full", 1)]["runtime_options"]["inference_precision"] == "bf16"
    assert by_row[("openvino", "fp32", "full", 1)]["runtime_options"]["inference_precision"] == "f32"
    # a thread count only for the runtimes that take one
    for target in FORMATS:
        opts = by_row[(target, "fp32", "full", 1)]["runtime_options"]
        assert ("threads" in opts) == (FORMATS[target].backend in ("onnxruntime", "openvino", "executorch", "litert")), \
            (target, opts)
    # one export per (target, export precision, stage, batch), int8 in the format's own mode
    exported = {(e["target"], e["precision"], e["dir"].split("-b")[-1]) for e in stubs.exports}
    assert len(stubs.exports) == len({e["dir"] for e in stubs.exports})
    assert ("tensorrt", "int8", "1") in exported and ("coreml", "fp16", "2") in exported
    modes = {e["target"]: e["int8_mode"] for e in stubs.exports if e["precision"] == "int8"}
    assert modes == {t: ("dynamic" if "dynamic" in f.int8_modes else f.int8_modes[0]) for t, f in FORMATS.items()
                     if "int8" in f.precisions}
    # the report is written, and says what ran where
    md = (tmp_path / "out" / "bench.md").read_text()
    assert "| tensorrt-rtx | int8 |" in md and "| coreml | fp16 |" in md
    # a second run uses the cache: nothing exported again
    n = len(stubs.exports)
    runner.run_bench(cfg)
    assert len(stubs.exports) == n


def test_new_format_needs_no_bench_change(stubs, tmp_path, monkeypatch):
    """A format registered in the formats table (as ExecuTorch / LiteRT will be) is a bench target with
    its precisions and builder options, no change to the bench."""
    fmt = Format(target="fakert", precisions=("fp32", "int8"), builder="x:y", backend="fakebackend", extra="export",
                 int8_modes=("weights",), options=("delegate",), notes={"run_needs": "CPU"})
    monkeypatch.setitem(FORMATS, "fakert", fmt)
    assert "fakert" in matrix.known_targets()
    cfg = matrix.BenchConfig(models=[MODEL], targets=["fakert"], precisions=["fp32", "bf16", "int8"], batches=[1],
                             stages=["full"], export_options={"fakert": {"delegate": "xnnpack"}},
                             out=tmp_path / "out", log=lambda m: None)
    data = runner.run_bench(cfg)
    rows = {(r["target"], r["precision"]): r for r in data["rows"]}
    assert rows[("fakert", "fp32")]["status"] == "ok" and rows[("fakert", "int8")]["status"] == "ok"
    assert any(s["target"] == "fakert" and s["precision"] == "bf16" for s in data["not_measured"])
    assert {(e["precision"], e.get("int8_mode")) for e in stubs.exports} == {("fp32", None), ("int8", "weights")}
    assert all(e["options"] == {"delegate": "xnnpack"} for e in stubs.exports)
    assert all("-o" in e["dir"] for e in stubs.exports)  # options are part of the cache key
    with pytest.raises(ValueError, match="takes no option"):
        matrix.BenchConfig(models=[MODEL], targets=["fakert"], export_options={"fakert": {"bogus": 1}})


def test_int8_only_export_option_leaves_float_rows_plain(tmp_path):
    """openvino:nncf_preset reaches the int8 export (and its cache key) only: the fp32 row of the same
    run is the plain export, which the pipeline would refuse with the option."""
    from farl_edge.bench.artifacts import artifact_dir, export_kwargs

    cfg = matrix.BenchConfig(models=[MODEL], targets=["openvino"], precisions=["fp32", "int8"], batches=[1],
                             export_options={"openvino": {"nncf_preset": "performance"}}, out=tmp_path)
    assert export_kwargs(cfg, "openvino", "int8")["options"] == {"nncf_preset": "performance"}
    assert "options" not in export_kwargs(cfg, "openvino", "fp32")
    rows, _ = matrix.plan(cfg, availability=lambda t: (True, ""))
    dirs = {r.precision: artifact_dir(cfg, r, r.precision).name for r in rows if r.target == "openvino"}
    assert dirs["fp32"].endswith("openvino-fp32-b1") and "-o" in dirs["int8"]


def test_target_precisions_and_torch_devices(tmp_path):
    cfg = matrix.BenchConfig(models=[MODEL], targets=["torch", "tensorrt", "coreml"], device="cuda",
                             precisions=["fp32", "torch:fp16", "torch:bf16", "tensorrt:int8"], batches=[1, 8],
                             stages=["full"], out=tmp_path)
    rows, skipped = matrix.plan(cfg, availability=lambda t: (True, ""))
    planned = {(r.target, r.precision) for r in rows}
    assert planned == {("torch", "fp32"), ("torch", "fp16"), ("torch", "bf16"), ("tensorrt", "fp32"),
                       ("tensorrt", "int8"), ("coreml", "fp32")}
    assert not skipped
    cpu = matrix.BenchConfig(models=[MODEL], targets=["torch"], precisions=["fp16", "bf16"], out=tmp_path)
    _, skipped = matrix.plan(cpu, availability=lambda t: (True, ""))
    assert [(s["target"], s["precision"]) for s in skipped] == [("torch", "fp16")]
    for bad in (["foo:fp16"], ["int4"]):
        with pytest.raises(ValueError, match="unknown precisions"):
            matrix.BenchConfig(models=[MODEL], precisions=bad)
    with pytest.raises(ValueError, match="device"):
        matrix.BenchConfig(models=[MODEL], device="tpu")


def test_backend_thread_option():
    assert matrix.backend_takes("onnxruntime", "threads") and matrix.backend_takes("openvino", "threads")
    assert not matrix.backend_takes("tensorrt", "threads") and not matrix.backend_takes("coreml", "threads")
    assert not matrix.backend_takes("no-such-backend", "threads")


def test_time_budget_skips_the_rest(stubs, tmp_path, monkeypatch):
    """Rows not started once the budget is spent are 'skipped' (not failed); a model not started at all
    is listed as such in the report."""
    clock = {"t": 1000.0}

    class FakeTime:
        strftime, gmtime = staticmethod(__import__("time").strftime), staticmethod(__import__("time").gmtime)

        @staticmethod
        def time():
            return clock["t"]

    monkeypatch.setattr(runner, "time", FakeTime)
    worker = stubs.worker

    def slow_worker(spec, *a):
        clock["t"] += 40.0
        return worker(spec, *a)
    monkeypatch.setattr(driver, "_worker", slow_worker)
    cfg = matrix.BenchConfig(models=[MODEL, "farl-small-celebm"], targets=["onnx"], precisions=["fp32", "int8"],
                             batches=[1], stages=["full", "backbone", "head"], budget_s=100,
                             out=tmp_path / "out", log=lambda m: None)
    data = runner.run_bench(cfg)
    status = {(r["model"], r["target"], r["precision"], r["stage"]): r["status"] for r in data["rows"]}
    assert status[(MODEL, "torch", "fp32", "full")] == "ok"
    assert list(status.values()).count("ok") == 3  # 3 × 40 s > 100 s
    assert status[(MODEL, "onnx", "int8", "full")] == "skipped"
    assert status[(MODEL, "onnx", "int8", "head")] == "skipped"  # derived from skipped rows
    assert {v for k, v in status.items() if k[0] == "farl-small-celebm"} == {"skipped"}
    assert "farl-small-celebm" not in data["models"]
    assert "## Not started" in (tmp_path / "out" / "bench.md").read_text()


def test_worker_runs_every_format_with_the_runtime_stubbed(tmp_path, monkeypatch):
    """The worker's side of an exported row (backend import, load with the row's options, timing) for
    every format, with ``farl_edge.runtime.load`` stubbed."""
    import farl_edge.runtime as rt
    from farl_edge.bench import worker

    seen = []

    class Session:
        def __init__(self, options):
            self.config = None
            self.info = {"backend": "stub", **options}  # what farl_edge.runtime.Session exposes

        def __call__(self, batch):
            return {"heatmaps": np.zeros((len(batch), 68, 4, 4), np.float32)}

    def fake_load(path, allow_failed=False, **options):
        seen.append(options)
        return Session(options)

    monkeypatch.setattr(rt, "load", fake_load)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 3, 8, 8), np.float32))
    for target, fmt in FORMATS.items():
        art = tmp_path / target
        art.mkdir()
        (art / "manifest.json").write_text(json.dumps({"backend": fmt.backend, "build": {}}))
        setting = matrix.export_setting(target, "fp32")
        spec = {"target": target, "backend": fmt.backend, "precision": "fp32", "stage": "full", "batch": 2,
                "threads": 1, "artifact": str(art), "runtime_options": setting.runtime_options,
                "policy": {"warmup": 1, "min_iters": 2, "min_time": 0.0, "max_iters": 2, "max_time": 5.0},
                "timing_input": str(x)}
        result = worker.run(spec)
        assert result["timing"]["iters"] == 2 and result["session"]["backend"] == "stub", target
        assert seen[-1] == setting.runtime_options


# ----------------------------------------------------------------------------- presets, dry run
def test_presets_and_dry_run(tmp_path):
    """`--preset gpu` / `--preset mac` plan the GPU / Core ML rows of the same models; flags win; a dry
    run exports and measures nothing, and says why rows cannot run here."""
    from farl_edge.bench.cli import DEVICE_MODELS
    from farl_edge.cli import main

    out = tmp_path / "gpu"
    assert main(["bench", "--preset", "gpu", "--dry-run", "--out", str(out), "--quiet"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["dry_run"] and plan["settings"]["device"] == "cuda" and list(plan["models"]) == DEVICE_MODELS.split(",")
    rows = {(r["model"], r["target"], r["precision"], r["batch"]): r for r in plan["rows"]}
    pairs = {(t, p) for _, t, p, _ in rows}
    assert {("torch", "fp32"), ("torch", "fp16"), ("torch", "bf16"), ("tensorrt", "fp16"),
            ("tensorrt", "int8")} <= pairs
    assert ("tensorrt", "fp32") not in pairs and not any(r["stage"] != "full" for r in plan["rows"])
    assert not list(tmp_path.rglob("*.safetensors")) and not (out / "cache").exists()
    torch_row = rows[(MODEL, "torch", "fp16", 1)]
    import torch

    if not torch.cuda.is_available():
        assert torch_row["status"] == "unavailable" and "CUDA" in torch_row["reason"]
    if not runner.gpus():
        assert rows[(MODEL, "tensorrt", "int8", 1)]["status"] == "unavailable"
        assert "NVIDIA GPU" in rows[(MODEL, "tensorrt", "int8", 1)]["reason"]
    assert "plan (dry run)" in (out / "plan.md").read_text()

    out = tmp_path / "mac"
    assert main(["bench", "--preset", "mac", "--model", MODEL, "--batch", "1", "--dry-run", "--out", str(out),
                 "--quiet"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert list(plan["models"]) == [MODEL] and plan["settings"]["batches"] == [1]
    assert {(r["target"], r["precision"]) for r in plan["rows"]} == {
        ("torch", "fp32"), ("coreml", "fp32"), ("coreml", "fp16"), ("coreml", "int8")}
    if sys.platform != "darwin":
        assert all("macOS" in r["reason"] for r in plan["rows"] if r["target"] == "coreml")

    # the plan of an available target lists the artifacts to export, with the formats table's settings
    out = tmp_path / "cpu"
    assert main(["bench", "--model", MODEL, "--targets", "onnx,openvino", "--precisions", "fp32,bf16,int8",
                 "--batch", "1", "--no-stages", "--dry-run", "--out", str(out), "--quiet"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    exports = plan["exports"]
    assert {(e["target"], e["precision"]) for e in exports.values()} == {
        ("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "int8")}
    assert {e["export"].get("int8_mode") for e in exports.values() if e["precision"] == "int8"} == {"dynamic", "static"}


@pytest.mark.parametrize("argv,message", [
    (["--precisions", "foo:fp16"], "unknown precisions"),
    (["--export-option", "tensorrt:bogus=1"], "takes no option"),
    (["--export-option", "tensorrt"], "TARGET:KEY=VALUE"),
    (["--targets", "tpu"], "unknown targets"),
])
def test_cli_user_errors(argv, message, tmp_path, capsys):
    from farl_edge.cli import main

    assert main(["bench", "--model", MODEL, "--dry-run", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert main(["bench", "--dry-run", "--out", str(tmp_path)]) == 2  # no model, no preset
    assert "--model is required" in capsys.readouterr().err


def test_bench_options_are_one_typed_source():
    """BenchOptions: one field per flag; presets only set options that have a default; the effective
    command spells every resolved option out (preset values included), then --export-option, then switches."""
    import dataclasses

    from farl_edge.bench.cli import DEFAULTS, PRESETS, BenchOptions
    from farl_edge.cli import build_parser

    assert {k for p in PRESETS.values() for k in p} <= set(DEFAULTS)
    args = build_parser().parse_args(["bench", "--preset", "mac", "--model", MODEL, "--no-stages", "--threads", "2",
                                      "--export-option", "coreml:coreml_weights=palettize6", "--cache", "c d",
                                      "--random-init", "--quiet", "--export-only"])
    opts = BenchOptions.from_args(args)
    assert opts.iters is None and opts.export_option == ["coreml:coreml_weights=palettize6"]
    opts = opts.resolved()
    assert (opts.iters, opts.eval_limit, opts.stages, opts.out) == (10, 16, "full", "bench-results")
    assert {f.name for f in dataclasses.fields(opts)} >= set(DEFAULTS)
    assert opts.command_line() == (
        "farl-edge bench --preset mac --model farl-small-300w --targets torch,coreml --precisions "
        "torch:fp32,coreml:fp32,coreml:fp16,coreml:int8 --batch 1,8 --device cpu --threads 2 --iters 10 "
        "--min-time 2.0 --max-time 60.0 --max-iters 1000 --warmup 2 --rel-tol 0.02 --eval-limit 16 --stages full "
        "--out bench-results --cache 'c d' --calib-size 16 --export-eval-size 4 --onnx-int8-mode dynamic "
        "--export-option coreml:coreml_weights=palettize6 --no-stages --random-init")


def test_export_option_reaches_the_config(tmp_path):
    from farl_edge.cli import main

    assert main(["bench", "--model", MODEL, "--targets", "tensorrt", "--export-option", "tensorrt:max_batch=8",
                 "--export-option", "tensorrt:compute_capability=sm89", "--dry-run", "--out", str(tmp_path),
                 "--quiet"]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["settings"]["export_options"] == {"tensorrt": {"max_batch": 8, "compute_capability": "sm89"}}
    assert "--export-option tensorrt:max_batch=8" in plan["command"]


# ----------------------------------------------------------------------------- real runs
def test_openvino_runtime_variants_real(tmp_path, helen_dir):
    """Real OpenVINO export + measurement: fp32 and bf16 rows share one fp32 IR and differ in the hint."""
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino not installed")
    from farl_edge.cli import main

    out = tmp_path / "bench"
    argv = ["bench", "--model", MODEL, "--targets", "openvino", "--precisions", "fp32,bf16", "--batch", "1",
            "--no-stages", "--iters", "2", "--min-time", "0", "--warmup", "1", "--eval-limit", "0",
            "--export-eval-size", "2", "--threads", "1", "--out", str(out), "--quiet"]
    ckpt = fallback_checkpoint(MODEL)
    if ckpt is not None:
        argv += ["--checkpoint", str(ckpt)]
    assert main(argv) == 0
    rows = {(r["target"], r["precision"]): r for r in json.loads((out / "bench.json").read_text())["rows"]}
    fp32, bf16 = rows[("openvino", "fp32")], rows[("openvino", "bf16")]
    assert fp32["status"] == bf16["status"] == "ok"
    assert fp32["artifact"] == bf16["artifact"] and fp32["artifact"].endswith("-openvino-fp32-b1")
    assert str(fp32["session"]["INFERENCE_PRECISION_HINT"]).lower() == "f32"
    assert str(bf16["session"]["INFERENCE_PRECISION_HINT"]).lower() == "bf16"
    assert fp32["session"]["INFERENCE_NUM_THREADS"] == 1
    assert fp32["floor_ms"] > 0


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(not _cuda(), reason="needs an NVIDIA GPU with a CUDA build of torch")
def test_gpu_preset_real(tmp_path):
    """On a GPU machine: the gpu preset on the small model, PyTorch CUDA rows and whichever TensorRT
    flavour is installed, all measured."""
    from farl_edge.cli import main

    out = tmp_path / "bench"
    rc = main(["bench", "--preset", "gpu", "--model", MODEL, "--batch", "1", "--iters", "5", "--min-time", "0",
               "--eval-limit", "4", "--calib-size", "4", "--out", str(out), "--quiet"])
    data = json.loads((out / "bench.json").read_text())
    rows = {(r["target"], r["precision"]): r for r in data["rows"]}
    for p in ("fp32", "fp16", "bf16"):
        assert rows[("torch", p)]["status"] == "ok" and rows[("torch", p)]["peak_gpu_mb"] > 0
        assert "floor_ms" not in rows[("torch", p)]
    measured = [r for r in data["rows"] if r["target"].startswith("tensorrt") and r["status"] != "unavailable"]
    assert all(r["status"] == "ok" for r in measured), measured
    assert rc == 0 and data["environment"]["gpus"]


@pytest.mark.skipif(sys.platform != "darwin" or importlib.util.find_spec("coremltools") is None,
                    reason="needs macOS with Core ML (coremltools)")
def test_mac_preset_real(tmp_path):
    from farl_edge.cli import main

    out = tmp_path / "bench"
    rc = main(["bench", "--preset", "mac", "--model", MODEL, "--precisions", "torch:fp32,coreml:fp16", "--batch", "1",
               "--iters", "3", "--min-time", "0", "--eval-limit", "4", "--out", str(out), "--quiet"])
    rows = {(r["target"], r["precision"]): r for r in json.loads((out / "bench.json").read_text())["rows"]}
    assert rc == 0 and rows[("coreml", "fp16")]["status"] == "ok"
