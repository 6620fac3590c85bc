"""ONNX target: fp32 / fp16 / int8 exports of the small models pass validation; int8 graphs really
hold Q/DQ nodes; a corrupted weight is rejected; `farl-edge eval` on the artifact matches PyTorch."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export_fixtures import (ALIGN, PARSE, assert_artifact_ok, eval_dir, export_args, fallback_checkpoint,  # noqa: F401
                             has_weights, leftovers, read_manifest, reuse_torch_export, run_export,
                             torch_export_cache)
from farl_edge.cli import main

pytestmark = pytest.mark.usefixtures("reuse_torch_export")


@pytest.fixture(scope="module")
def onnx_fp32_align(tmp_path_factory):
    """One fp32 export through the CLI, shared by the tests below."""
    out = tmp_path_factory.mktemp("onnx") / "align-fp32"
    with torch_export_cache():
        assert main(export_args(ALIGN, "onnx", "fp32", out)) == 0
    return out


def _ops(path):
    model = onnx.load(str(path), load_external_data=False)
    return [n.op_type for n in model.graph.node]


def test_onnx_fp32_alignment(onnx_fp32_align):
    m = assert_artifact_ok(onnx_fp32_align, "onnx", "fp32")
    assert m["backend"] == "onnxruntime" and m["opset"] == 18
    assert [o["name"] for o in m["outputs"]] == ["landmarks", "heatmaps"]
    assert m["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert m["outputs"][1]["shape"] == [1, 68, 56, 56]
    ops = _ops(onnx_fp32_align / "model.onnx")
    layers = m["model"]["vision"]["layers"]
    assert ops.count("Attention") == layers, "ORT attention fusion must fuse every block"
    assert "QuickGelu" in ops and "SkipLayerNormalization" in ops
    assert m["build"]["exporter"] == "dynamo"
    values = {c["name"]: c["measured"] for c in m["validation"]["checks"] if c["stage"] == "values"}
    assert values["heatmaps cosine"] >= 0.99999
    assert m["calibration"] is None
    assert m["weights"]["source"] == ("shipped" if has_weights(ALIGN) else "checkpoint")


def test_onnx_fp16_parsing(tmp_path):
    out = tmp_path / "parse-fp16"
    assert main(export_args(PARSE, "onnx", "fp16", out)) == 0
    m = assert_artifact_ok(out, "onnx", "fp16")
    model = onnx.load(str(out / "model.onnx"))
    dtypes = {i.data_type for i in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in dtypes
    # graph I/O stays fp32
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    names = [c["name"] for c in m["validation"]["checks"]]
    assert "pixel agreement (%)" in names and "|Δf1_mean|" in names


@pytest.mark.slow
@pytest.mark.parametrize("name", [ALIGN, PARSE])
def test_onnx_int8_static_has_qdq(tmp_path, name):
    out = tmp_path / "int8"
    result = run_export(name, "onnx", "int8", out)
    m = assert_artifact_ok(out, "onnx", "int8")
    ops = _ops(out / "model.onnx")
    assert ops.count("QuantizeLinear") >= 20 and ops.count("DequantizeLinear") >= 20
    q = m["build"]["quantization"]
    assert q["mode"] == "static" and q["format"] == "QDQ" and q["per_channel"] is True
    assert m["calibration"]["count"] == 16 and len(m["calibration"]["sha256"]) == 64
    assert m["calibration"]["kind"].startswith("annotated:")
    assert result.report.passed


@pytest.mark.slow
def test_onnx_int8_dynamic(tmp_path):
    out = tmp_path / "int8-dyn"
    run_export(ALIGN, "onnx", "int8", out, int8_mode="dynamic")
    m = assert_artifact_ok(out, "onnx", "int8")
    assert m["calibration"] is None and m["build"]["quantization"]["mode"] == "dynamic"
    ops = _ops(out / "model.onnx")
    assert sum(o in ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLinear") for o in ops) > 0


def _corrupt_largest_initializer(model: onnx.ModelProto) -> str:
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init).copy()
    arr.flat[: arr.size // 2] *= -3.0
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    return init.name


def test_corrupted_weight_is_rejected(tmp_path, monkeypatch, capsys):
    """A builder that damages a weight: the export exits 1 with a table, and leaves nothing."""
    from farl_edge.export import onnx_export

    real = onnx_export.fuse_for_ort

    def fuse_and_corrupt(src, dst, cfg):
        info = real(src, dst, cfg)
        model = onnx.load(str(dst))
        _corrupt_largest_initializer(model)
        onnx_export.save_onnx(model, dst)
        return info

    monkeypatch.setattr(onnx_export, "fuse_for_ort", fuse_and_corrupt)
    out = tmp_path / "bad"
    assert main(export_args(ALIGN, "onnx", "fp32", out)) == 1
    err = capsys.readouterr().err
    assert "failed validation" in err and "FAIL" in err and "cosine" in err
    assert "stage" in err and "measured" in err and "limit" in err  # the table header
    assert leftovers(tmp_path) == []


def test_corrupted_weight_kept_when_asked(tmp_path, monkeypatch):
    from farl_edge.export import onnx_export
    from farl_edge.runtime import ArtifactError, load

    real = onnx_export.fuse_for_ort

    def fuse_and_corrupt(src, dst, cfg):
        info = real(src, dst, cfg)
        model = onnx.load(str(dst))
        _corrupt_largest_initializer(model)
        onnx_export.save_onnx(model, dst)
        return info

    monkeypatch.setattr(onnx_export, "fuse_for_ort", fuse_and_corrupt)
    out = tmp_path / "bad"
    assert main(export_args(ALIGN, "onnx", "fp32", out, "--keep-failed")) == 1
    m = read_manifest(out)
    assert m["status"] == "failed" and "values" in m["failure"]
    with pytest.raises(ArtifactError, match="failed"):
        load(out)
    assert load(out, allow_failed=True).manifest["status"] == "failed"


def test_edited_artifact_fails_revalidation(onnx_fp32_align, tmp_path):
    """Edit an initializer of a finished artifact (and re-hash it, as a broken tool would):
    re-running the validation rejects it with a table."""
    import shutil

    from farl_edge.export import manifest as mf
    from farl_edge.export.validate import ParityError, validate_artifact
    from farl_edge.models import create_model

    copy = tmp_path / "edited"
    shutil.copytree(onnx_fp32_align, copy)
    model = onnx.load(str(copy / "model.onnx"))
    _corrupt_largest_initializer(model)
    onnx.save(model, str(copy / "model.onnx"))
    manifest = read_manifest(copy)
    mf.write_manifest(copy, manifest)
    torch_model = create_model(ALIGN, checkpoint=fallback_checkpoint(ALIGN))
    with pytest.raises(ParityError) as info:
        validate_artifact(copy, torch_model, eval_data=eval_dir(ALIGN), eval_size=8)
    assert "FAIL" in str(info.value)


def test_eval_on_artifact_matches_pytorch(onnx_fp32_align, tmp_path):
    """`farl-edge eval --model <artifact>` is the same measurement as on the PyTorch model."""
    data = str(eval_dir(ALIGN))
    a, b = tmp_path / "artifact.json", tmp_path / "torch.json"
    assert main(["eval", "--model", str(onnx_fp32_align), "--data", data, "--limit", "8", "--json", str(a)]) == 0
    ckpt = fallback_checkpoint(ALIGN)
    assert main(["eval", "--model", ALIGN, *(["--checkpoint", str(ckpt)] if ckpt else []), "--data", data,
                 "--limit", "8", "--json", str(b)]) == 0
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ja["model"] == jb["model"] == ALIGN
    for key in ("nme_io", "nme_ip", "auc", "fr"):
        assert abs(ja[key] - jb[key]) <= 1e-3, key


def test_onnx_dynamic_batch(tmp_path):
    out = tmp_path / "dyn"
    assert main(export_args(PARSE, "onnx", "fp32", out, "--batch", "dynamic")) == 0
    m = assert_artifact_ok(out, "onnx", "fp32")
    assert m["inputs"][0]["shape"][0] == "batch" and m["batch"] == "batch"
    from farl_edge.runtime import load

    s = load(out)
    assert s.batch is None
    x = np.random.default_rng(0).random((3, 3, 224, 224), dtype=np.float32)
    assert s(x)["logits"].shape == (3, 19, 56, 56)


def test_calibration_sets(tmp_path, w300_train_dir):
    """Annotated data sets are detected; a plain image folder gives whole-image crops; the
    description hashes the files used."""
    import shutil

    from farl_edge.export.calibration import calibration_set, open_faces
    from farl_edge.registry import get_config

    cfg = get_config(ALIGN)
    annotated = calibration_set(cfg, w300_train_dir, 4)
    assert annotated.kind == "annotated:300w" and len(annotated) == 4 and annotated.total > 1000
    x = annotated.inputs(cfg)
    assert x.shape == (4, 3, 224, 224) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    folder = tmp_path / "faces"
    folder.mkdir()
    for p in sorted(w300_train_dir.glob("*.jpg"))[:3]:
        shutil.copy(p, folder / p.name)
    plain = open_faces(folder, 8)
    assert plain.kind == "images" and len(plain) == 3
    d1 = plain.describe()
    assert plain.inputs(cfg).shape == (3, 3, 224, 224)
    (folder / sorted(p.name for p in folder.iterdir())[0]).write_bytes(b"changed")
    assert open_faces(folder, 8).describe()["sha256"] != d1["sha256"]
