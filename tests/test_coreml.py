"""Core ML target: conversion of a small model to fp16 and int8 ML programs on Linux, checked from
the package's spec and MIL program (I/O, precision, quantised weight ops, metadata, size), a
corrupt package's error, and the builder contract. Prediction needs macOS (skipped elsewhere)."""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("coremltools")

from farl_edge.export import coreml_export as ce  # noqa: E402

ALIGN = "farl-small-300w"
on_macos = pytest.mark.skipif(not ce.can_predict()[0], reason="Core ML prediction needs macOS")


@pytest.fixture(scope="module")
def model():
    import torch

    from farl_edge.models import create_model

    torch.manual_seed(0)
    return create_model(ALIGN)


@pytest.fixture(scope="module")
def packages(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("coreml")
    out = {}
    for precision in ("fp16", "int8"):
        path = folder / f"{precision}.mlpackage"
        record = ce.export_package(model, path, precision, activations="fp16" if precision == "int8" else "auto",
                                   log=lambda m: None)
        out[precision] = (path, record)
    return out


def test_converts_the_registry_model_itself(model, monkeypatch):
    """No Core ML copy of the soft-argmax: the converter traces the model the other targets export."""
    import torch

    class Traced(Exception):
        pass

    def trace(module, *args, **kwargs):
        raise Traced(module)

    monkeypatch.setattr(torch.jit, "trace", trace)
    with pytest.raises(Traced) as info:
        ce.convert(model, "fp32")
    assert info.value.args[0] is model


def test_fp16_package_spec(packages):
    path, record = packages["fp16"]
    spec = ce.inspect_package(path)
    assert spec["inputs"] == [{"name": "image", "type": "image", "shape": [1, 3, 224, 224], "color": "RGB"}]
    assert spec["outputs"] == [
        {"name": "landmarks", "type": "multiarray", "shape": [1, 68, 2], "dtype": "float32"},
        {"name": "heatmaps", "type": "multiarray", "shape": [1, 68, 56, 56], "dtype": "float32"}]
    assert spec["compute_precision"] == "fp16" and record["compute_precision"] == "fp16"
    assert spec["deployment_target"] == "iOS16" == record["deployment_target"]
    assert not spec["quantized_weight_ops"]
    ops = spec["ops"]
    for op in ("conv", "linear", "layer_norm", "softmax", "matmul", "conv_transpose", "upsample_bilinear"):
        assert ops.get(op, 0) > 0, op
    meta = spec["metadata"]
    assert meta["farl_edge.model"] == ALIGN and meta["farl_edge.task"] == "alignment"
    assert meta["farl_edge.num_landmarks"] == "68" and meta["farl_edge.precision"] == "fp16"
    assert spec["author"] == "farl-edge" and "MIT" in spec["license"] and ALIGN in spec["short_description"]


def test_int8_package_spec(packages):
    path, record = packages["int8"]
    spec = ce.inspect_package(path)
    assert spec["deployment_target"] == "iOS17" == record["deployment_target"]
    assert spec["quantized_weight_ops"].get("constexpr_affine_dequantize", 0) > 0
    assert spec["compute_precision"] == "fp16"
    assert record["weights"] == "int8 linear symmetric per-channel"
    assert [o["name"] for o in spec["outputs"]] == ["landmarks", "heatmaps"]
    if not ce.can_predict()[0]:
        assert record["activations"] == "fp16" and "W8" in record["activation_quantization"]


def test_int8_package_is_half_of_fp16(packages):
    fp16, int8 = ce.package_bytes(packages["fp16"][0]), ce.package_bytes(packages["int8"][0])
    assert 1.7 < fp16 / int8 < 2.3, (fp16, int8)


def test_palettized_weights(packages, tmp_path):
    ct = ce.import_coremltools()
    with ce.quiet():
        ml = ct.models.MLModel(str(packages["fp16"][0]), skip_model_load=True)
    pal, text = ce.quantize_weights(ml, "palettize4")
    with ce.quiet():
        pal.save(str(tmp_path / "pal.mlpackage"))
    spec = ce.inspect_package(tmp_path / "pal.mlpackage")
    assert spec["quantized_weight_ops"].get("constexpr_lut_to_dense", 0) > 0 and "4-bit" in text
    with pytest.raises(ValueError, match="coreml-weights"):
        ce.quantize_weights(ml, "linear3")


def test_corrupt_package_clear_error(packages, tmp_path):
    bad = tmp_path / "bad.mlpackage"
    shutil.copytree(packages["fp16"][0], bad)
    (bad / "Data/com.apple.CoreML/model.mlmodel").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match="corrupt Core ML package"):
        ce.inspect_package(bad)
    (bad / "Data/com.apple.CoreML/model.mlmodel").unlink()
    with pytest.raises(ValueError, match="model.mlmodel is missing"):
        ce.inspect_package(bad)
    with pytest.raises(ValueError, match="does not exist"):
        ce.inspect_package(tmp_path / "none.mlpackage")
    from farl_edge.runtime import ArtifactError
    from farl_edge.runtime.backends import coreml_backend

    with pytest.raises(ArtifactError, match="model.mlmodel is missing"):
        coreml_backend.check_package(bad)


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the message off macOS")
def test_backend_unavailable_off_macos():
    from farl_edge.runtime import ArtifactError
    from farl_edge.runtime.backends import coreml_backend, get_backend

    assert coreml_backend.available() == (False, "Core ML runs only on macOS")
    with pytest.raises(ArtifactError, match="Core ML runs only on macOS"):
        get_backend("coreml")


def test_builder_contract(model, tmp_path):
    from farl_edge.export.config import export_config
    from farl_edge.export.formats import BuildJob, get_format

    fmt = get_format("coreml")
    assert fmt.backend == "coreml" and fmt.load_builder() is ce.build
    job = BuildJob(model=model, cfg=model.cfg, export_cfg=export_config(model.cfg, batch=2), precision="fp16",
                   folder=tmp_path, workdir=tmp_path, log=lambda m: None)
    with pytest.raises(ValueError, match="batch 1"):
        ce.build(job)


@on_macos
def test_prediction_matches_torch(packages, model):  # pragma: no cover - macOS only
    from farl_edge.models.predictor import TorchPredictor
    from farl_edge.runtime.backends.coreml_backend import CoreMLRunner

    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, (1, 3, 224, 224)) / 255.0).astype(np.float32)
    ref = TorchPredictor(model)(x)
    got = CoreMLRunner(packages["fp16"][0]).run(x)
    a, b = ref["heatmaps"].ravel(), got["heatmaps"].ravel()
    assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.999
