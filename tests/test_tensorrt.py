"""TensorRT targets: ONNX graph preparation (fp16 / int8 Q/DQ) checked on CPU, real TensorRT for RTX
engine builds of a small model on the CPU (ahead of time), the engine container's metadata, and
refusal of mismatched or corrupt engines. Running an engine needs an NVIDIA GPU (skipped here)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import shared_data
from farl_edge.export import tensorrt_prepare as tp
from farl_edge.runtime.backends import tensorrt_backend as tb

ALIGN = "farl-small-300w"
HAS_RTX = importlib.util.find_spec("tensorrt_rtx_bindings") is not None
HAS_GPU = bool(tb.cuda_devices())
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="TensorRT for RTX not installed")
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU")


@pytest.fixture(scope="module")
def model():
    import torch

    from farl_edge.models import create_model

    torch.manual_seed(0)
    return create_model(ALIGN)  # shipped weights when the package has them, else seeded random init


@pytest.fixture(scope="module")
def faces():
    from farl_edge.export.calibration import open_faces

    train = open_faces(shared_data("300w", "train"), 6, purpose="calibration")
    test = open_faces(shared_data("300w", "test-helen"), 4, purpose="evaluation")
    return train, test


@pytest.fixture(scope="module")
def plain_onnx(model, tmp_path_factory):
    """The plain exported graph (static batch 1) and its dynamic-batch twin."""
    from farl_edge.export import onnx_export
    from farl_edge.export.config import export_config

    folder = tmp_path_factory.mktemp("trt-onnx")
    raw = onnx_export.torch2onnx(model, folder / "raw.onnx", export_config(model.cfg, batch=None))
    out = {}
    for name, batch in (("static", 1), ("dynamic", None)):
        m = onnx.load(str(raw))
        onnx_export.fix_batch(m, batch)
        onnx_export.save_onnx(m, folder / f"{name}.onnx")
        out[name] = folder / f"{name}.onnx"
    return out


def _ort(path):
    from farl_edge.runtime.backends.onnxruntime_backend import OrtRunner

    return OrtRunner(Path(path), optimization_level="basic", threads=2)


def _cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _torch(model, x):
    from farl_edge.models.predictor import TorchPredictor

    return TorchPredictor(model)(x)


# ------------------------------------------------------------------------------------------
# ONNX preparation (CPU)
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(plain_onnx, model, faces, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trt-prepared")
    train, _ = faces
    fp16 = tp.prepare("fp16", plain_onnx["static"], folder / "fp16.onnx")
    int8 = tp.prepare("int8", plain_onnx["static"], folder / "int8.onnx", batches=list(train.batches(model.cfg, 1)),
                      op_types=("MatMul", "Gemm", "Conv", "ConvTranspose"), workdir=folder)
    return {"fp16": (folder / "fp16.onnx", fp16), "int8": (folder / "int8.onnx", int8)}


def test_prepare_fp16_graph(prepared, model, faces):
    path, info = prepared["fp16"]
    onnx.checker.check_model(str(path), full_check=True)
    assert info["initializer_types"].get("FLOAT16", 0) > 0, "fp16 weights expected"
    assert set(info["inputs"].values()) == {"FLOAT"} and set(info["outputs"].values()) == {"FLOAT"}
    assert info["Cast"] > 0 and info["QuantizeLinear"] == 0
    assert "ModelOpt not installed" in info["tool"] or "modelopt" in info["tool"]
    _, test = faces
    x = test.inputs(model.cfg)[:1]
    ref, got = _torch(model, x), _ort(path).run(x)
    for name in ("landmarks", "heatmaps"):
        assert _cosine(ref[name], got[name]) > 0.9999


def test_prepare_int8_graph(prepared, model, faces):
    path, info = prepared["int8"]
    onnx.checker.check_model(str(path), full_check=True)
    assert info["QuantizeLinear"] > 0 and info["DequantizeLinear"] > 0
    assert info["initializer_types"].get("INT8", 0) > 0, "int8 weights expected"
    assert set(info["inputs"].values()) == {"FLOAT"} and set(info["outputs"].values()) == {"FLOAT"}
    # symmetric: every zero point is 0 (TensorRT takes nothing else), and no int32 bias DQ
    g = onnx.load(str(path))
    inits = {i.name: i for i in g.graph.initializer}
    zps = [onnx.numpy_helper.to_array(inits[n.input[2]]) for n in g.graph.node
           if n.op_type in tp.QDQ_OPS and len(n.input) > 2 and n.input[2] in inits]
    assert zps and all(int(np.abs(z).max()) == 0 for z in zps)
    assert all(inits[n.input[0]].data_type != onnx.TensorProto.INT32 for n in g.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits)
    assert info["tool"].startswith(("onnxruntime.quantization", "modelopt"))
    _, test = faces
    x = test.inputs(model.cfg)[:1]
    ref, got = _torch(model, x), _ort(path).run(x)
    assert _cosine(ref["heatmaps"], got["heatmaps"]) > 0.999


def test_prepare_rejects_bad_requests(plain_onnx, tmp_path):
    with pytest.raises(ValueError, match="precisions"):
        tp.prepare("bf16", plain_onnx["static"], tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="calibration"):
        tp.prepare("int8", plain_onnx["static"], tmp_path / "x.onnx", batches=[])


# ------------------------------------------------------------------------------------------
# engine container (no TensorRT needed)
# ------------------------------------------------------------------------------------------

HEADER = {"flavour": "tensorrt-rtx", "version": "1.7.1.116", "compute_capabilities": ["sm89"], "precision": "fp16",
          "model": ALIGN, "input_size": 224, "batch": 1}


def test_container_round_trip(tmp_path):
    path = tmp_path / "model.engine"
    written = tb.write_engine(path, b"\x01engine-bytes" * 10, HEADER)
    header, engine = tb.read_engine(path)
    assert engine == b"\x01engine-bytes" * 10
    assert header == written and header["engine_bytes"] == len(engine)
    for key, value in HEADER.items():
        assert header[key] == value
    assert tb.read_header(path)["model"] == ALIGN


def test_container_refuses_corrupt(tmp_path):
    path = tmp_path / "model.engine"
    tb.write_engine(path, bytes(range(256)) * 4, HEADER)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "flipped.engine").write_bytes(bytes(data))
    with pytest.raises(tb.EngineError, match="sha256"):
        tb.read_engine(tmp_path / "flipped.engine")
    (tmp_path / "short.engine").write_bytes(path.read_bytes()[:-100])
    with pytest.raises(tb.EngineError, match="truncated"):
        tb.read_engine(tmp_path / "short.engine")
    (tmp_path / "plain.plan").write_bytes(b"ftrt" + bytes(100))
    with pytest.raises(tb.EngineError, match="not a farl-edge TensorRT engine"):
        tb.read_engine(tmp_path / "plain.plan")
    raw = path.read_bytes()
    (tmp_path / "badjson.engine").write_bytes(raw[:12] + b"X" + raw[13:])
    with pytest.raises(tb.EngineError, match="corrupt engine"):
        tb.read_engine(tmp_path / "badjson.engine")
    with pytest.raises(tb.EngineError, match="does not exist"):
        tb.read_engine(tmp_path / "missing.engine")


def test_refuses_mismatched_engine():
    tb.check_compatible(HEADER, "1.7.1.116", "sm89")  # matches
    with pytest.raises(tb.EngineError, match=r"built with tensorrt-rtx 1\.7\.1\.116 but tensorrt-rtx 1\.8"):
        tb.check_compatible(HEADER, "1.8.0.1", "sm89")
    tb.check_compatible(HEADER, "1.8.0.1", "sm89", allow_version_mismatch=True)
    with pytest.raises(tb.EngineError, match="compute capability sm89 but this GPU is sm120"):
        tb.check_compatible(HEADER, "1.7.1.116", "12.0")
    with pytest.raises(tb.EngineError, match="not installed here"):
        tb.check_compatible({**HEADER, "flavour": "tensorrt"}, None, "sm89")
    with pytest.raises(tb.EngineError, match="unknown TensorRT flavour"):
        tb.check_compatible({**HEADER, "flavour": "tensorrt-llm"}, "1", "sm89")


def test_normalize_cc():
    assert tb.normalize_cc("8.9") == tb.normalize_cc("sm89") == tb.normalize_cc("SM_89") == tb.normalize_cc((8, 9))
    assert tb.normalize_cc("12.0") == "sm120" and tb.normalize_cc("native") == "current"
    with pytest.raises(ValueError):
        tb.normalize_cc("ampere")


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU message")
def test_backend_reports_unavailable_without_gpu():
    ok, why = tb.available()
    assert not ok and ("NVIDIA GPU" in why or "not installed" in why)
    from farl_edge.runtime import ArtifactError
    from farl_edge.runtime.backends import get_backend

    with pytest.raises(ArtifactError, match="not available here"):
        get_backend("tensorrt")


def test_formats_registered():
    from farl_edge.export.formats import get_format

    for target in ("tensorrt", "tensorrt-rtx"):
        f = get_format(target)
        assert f.backend == "tensorrt" and f.precisions == ("fp32", "fp16", "int8")
        assert f.load_builder().__name__.startswith("build_tensorrt")
    assert get_format("tensorrt-rtx").extra == "tensorrt-rtx"


# ------------------------------------------------------------------------------------------
# TensorRT for RTX builds on the CPU
# ------------------------------------------------------------------------------------------

@needs_rtx
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_rtx_engine_build(prepared, precision, tmp_path):
    from farl_edge.export import tensorrt_build as tbuild

    flavour = tbuild.load_flavour("tensorrt-rtx")
    assert flavour.ahead_of_time and "sm89" in flavour.supported_ccs()
    src, info = prepared[precision]
    record = tbuild.build_engine(tbuild.EngineBuild(
        onnx_path=src, engine_path=tmp_path / "model.engine", flavour=flavour, precision=precision,
        header={"model": ALIGN, "input_size": 224, "graph_tool": info["tool"]}, batch=1,
        compute_capability="sm86,8.9", log_path=tmp_path / "build.log", log=lambda m: None))
    header = tb.read_header(tmp_path / "model.engine")
    assert header["flavour"] == "tensorrt-rtx" and header["version"] == flavour.version
    assert header["compute_capabilities"] == ["sm86", "sm89"] and header["precision"] == precision
    assert header["model"] == ALIGN and header["input_size"] == 224 and header["batch"] == 1
    assert record["engine_bytes"] > 1_000_000 and record["build_s"] > 0
    assert record["settings"]["strongly_typed"]
    log = (tmp_path / "build.log").read_text()
    assert "tensorrt-rtx" in log and "engine:" in log
    tb.check_compatible(header, flavour.version, "sm89")
    with pytest.raises(tb.EngineError, match="compute capability"):
        tb.check_compatible(header, flavour.version, "sm120")


@needs_rtx
def test_rtx_dynamic_batch_profile(plain_onnx, tmp_path):
    from farl_edge.export import tensorrt_build as tbuild

    flavour = tbuild.load_flavour("tensorrt-rtx")
    record = tbuild.build_engine(tbuild.EngineBuild.from_options(
        {"max_batch": 8, "compute_capability": "sm89"}, onnx_path=plain_onnx["dynamic"],
        engine_path=tmp_path / "model.engine", flavour=flavour, precision="fp32", header={"model": ALIGN},
        batch=None, log=lambda m: None))
    assert record["batch"] == {"min": 1, "opt": 8, "max": 8}
    assert tb.read_header(tmp_path / "model.engine")["batch"] == {"min": 1, "opt": 8, "max": 8}
    assert record["settings"].get("tf32") is False  # fp32 means fp32


@needs_rtx
def test_rtx_compute_capability_errors():
    from farl_edge.export import tensorrt_build as tbuild

    flavour = tbuild.load_flavour("tensorrt-rtx")
    with pytest.raises(ValueError, match="not sm61"):
        flavour.resolve_ccs("sm61")
    if not HAS_GPU:
        with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
            flavour.resolve_ccs("current")
        ccs, gpus = flavour.resolve_ccs(None)  # no GPU: every compute capability the library knows
        assert ccs == flavour.supported_ccs() and gpus == []
        assert "sm75" not in flavour.resolve_ccs(None, "fp32")[0]  # no fp32 GEMM on Turing


@needs_rtx
def test_rtx_builder_job_int8(model, faces, tmp_path):
    """The export builder end to end: Q/DQ graph (tool recorded), ORT parity of it, engine + log."""
    from farl_edge.export import tensorrt_build as tbuild
    from farl_edge.export.config import export_config
    from farl_edge.export.formats import BuildJob

    train, test = faces
    folder, work = tmp_path / "art", tmp_path / "work"
    folder.mkdir()
    work.mkdir()
    job = BuildJob(model=model, cfg=model.cfg, export_cfg=export_config(model.cfg, batch=1), precision="int8",
                   folder=folder, workdir=work, calibration=train, evaluation=test,
                   options={"compute_capability": "sm89"}, log=lambda m: None)
    result = tbuild.build_tensorrt_rtx(job)
    assert result.model_file == "model.engine"
    assert sorted(p.name for p in folder.iterdir()) == ["build.log", "model.engine", "model.onnx"]
    info = result.info
    assert info["prepared"]["QuantizeLinear"] > 0 and info["prepared"]["tool"]
    assert info["prepared_check"]["onnx_checker"] == "ok" and info["prepared_check"]["parity"]["passed"]
    assert info["engine"]["compute_capabilities"] == ["sm89"]
    header = tb.read_header(folder / "model.engine")
    assert header["graph_tool"] == info["prepared"]["tool"] and header["task"] == "alignment"
    json.dumps(info)  # manifest-serialisable


def test_tensorrt_target_needs_gpu_or_library(model, tmp_path):
    if HAS_GPU and importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT and a GPU are present")
    from farl_edge.export import tensorrt_build as tbuild
    from farl_edge.export.config import export_config
    from farl_edge.export.formats import BuildJob

    job = BuildJob(model=model, cfg=model.cfg, export_cfg=export_config(model.cfg), precision="fp16",
                   folder=tmp_path, workdir=tmp_path, log=lambda m: None)
    with pytest.raises(tbuild.FlavourUnavailable, match="not installed|needs an NVIDIA GPU"):
        tbuild.build_tensorrt(job)


# ------------------------------------------------------------------------------------------
# GPU only
# ------------------------------------------------------------------------------------------

@needs_gpu
@needs_rtx
def test_rtx_engine_runs_on_gpu(prepared, model, faces, tmp_path):
    from farl_edge.export import tensorrt_build as tbuild

    flavour = tbuild.load_flavour("tensorrt-rtx")
    src, _ = prepared["fp16"]
    tbuild.build_engine(tbuild.EngineBuild(onnx_path=src, engine_path=tmp_path / "model.engine", flavour=flavour,
                                           precision="fp16", header={"model": ALIGN}, batch=1,
                                           compute_capability="current", log=lambda m: None))
    runner = tb.TensorRTRunner(tmp_path / "model.engine")
    _, test = faces
    x = test.inputs(model.cfg)[:1]
    ref, got = _torch(model, x), runner.run(x)
    assert _cosine(ref["heatmaps"], got["heatmaps"]) > 0.999


# ------------------------------------------------------------------------------------------
# benchmarks/gpu_check (its CPU side)
# ------------------------------------------------------------------------------------------

def test_gpu_check_stages_faces_and_run_sh_plans(tmp_path):
    """gpu_check.py stages faces laid out like ../shared/data; run.sh, the one-call wrapper, runs
    `farl-edge bench --preset gpu` on them (here its --dry-run: the plan, nothing measured)."""
    import importlib.util as iu
    import os
    import subprocess
    import sys

    from conftest import ROOT

    here = ROOT / "benchmarks" / "gpu_check"
    spec = iu.spec_from_file_location("gpu_check", here / "gpu_check.py")
    mod = iu.module_from_spec(spec)
    spec.loader.exec_module(mod)
    data = tmp_path / "data"
    copied = mod.stage_faces(2, dest=data, source=shared_data("300w", "test-helen").parents[1])
    assert copied["300w/test-helen"] == 2 and copied["300w/train"] == 2
    helen = sorted(p.name for p in (data / "300w" / "test-helen").iterdir())
    assert len(helen) == 4 and {p.rsplit(".", 1)[1] for p in helen} == {"jpg", "pts"}
    if "celebamask-hq/val" in copied:
        assert len(list((data / "celebamask-hq" / "val" / "masks").glob("*.png"))) == 2

    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "WHEELS": str(tmp_path / "no-wheels"), "BENCH_CACHE": str(tmp_path / "c"),
           "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(here / "run.sh"), "--dry-run", "--data-root", str(data), "--quiet"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "farl-edge bench exit status 0" in (out / "bench.log").read_text()
    assert (out / "environment.txt").is_file()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["command"].startswith("farl-edge bench --preset gpu")
    assert list(plan["models"]) == ["farl-small-300w", "farl-b16-lapa-448", "farl-b16-300w-448"]
    assert plan["models"]["farl-small-300w"]["eval_data"] == str(data / "300w" / "test-helen")
    assert plan["settings"]["device"] == "cuda" and plan["settings"]["budget_s"] == 400
    rows = {(r["model"], r["target"], r["precision"]): r for r in plan["rows"]}
    assert {("torch", "fp16"), ("torch", "bf16"), ("tensorrt", "fp16"), ("tensorrt", "int8")} <= {
        (t, p) for _, t, p in rows}
    if not HAS_GPU:
        assert "NVIDIA GPU" in rows[("farl-b16-lapa-448", "tensorrt", "fp16")]["reason"]
        assert "CUDA" in rows[("farl-b16-lapa-448", "torch", "fp16")]["reason"]
    assert not (tmp_path / "c").exists()  # a dry run exports nothing
