"""farl_edge.runtime: manifest + sha256 verification, backends, Session behaviour, torch-free import.

Uses a tiny hand-made ONNX artifact (no export run), so these tests take seconds.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from farl_edge.registry import get_config

S = 224


def _tiny_parsing_onnx(path, batch):
    """logits = AveragePool4x4(Conv1x1(image)) → (B, 19, 56, 56), a stand-in parsing model."""
    w = np.random.default_rng(0).standard_normal((19, 3, 1, 1)).astype(np.float32)
    dim = batch if batch else "batch"
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["c"]),
         helper.make_node("AveragePool", ["c"], ["logits"], kernel_shape=[4, 4], strides=[4, 4])],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [dim, 3, S, S])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dim, 19, S // 4, S // 4])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return w


def make_artifact(folder, backend="onnxruntime", batch=1, status="ok"):
    from farl_edge.export import manifest as mf

    folder.mkdir(parents=True)
    w = _tiny_parsing_onnx(folder / "model.onnx", batch)
    cfg = get_config("farl-small-celebm")
    b = batch if batch else "batch"
    manifest = mf.new_manifest(
        status=status, model=cfg.to_dict(), task=cfg.task, input_size=S, target="onnx", precision="fp32",
        backend=backend, model_file="model.onnx",
        inputs=[{"name": "image", "shape": [b, 3, S, S], "dtype": "float32"}],
        outputs=[{"name": "logits", "shape": [b, 19, S // 4, S // 4], "dtype": "float32"}],
        runtime={"backend": backend, "options": {}})
    mf.write_manifest(folder, manifest)
    return w


def _expected(w, x):
    conv = np.einsum("oc,bchw->bohw", w[:, :, 0, 0], x)
    b, c, h, ww = conv.shape
    return conv.reshape(b, c, h // 4, 4, ww // 4, 4).mean(axis=(3, 5))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_load_and_run(tmp_path, backend):
    from farl_edge.runtime import Session, load
    from farl_edge.runtime.backends import available_backends

    if not available_backends()[backend][0]:
        pytest.skip(f"{backend} not installed")
    w = make_artifact(tmp_path / "a", backend=backend)
    # OpenVINO would run this f32 model in bf16 on AMX CPUs unless told: ask for f32 here.
    s = load(tmp_path / "a", threads=1, **({"inference_precision": "f32"} if backend == "openvino" else {}))
    assert isinstance(s, Session)
    assert s.config == get_config("farl-small-celebm")
    assert s.input_name == "image" and s.input_names == ["image"] and s.output_names == ["logits"]
    assert s.manifest["backend"] == backend and s.batch == 1
    x = np.random.default_rng(1).random((3, 3, S, S), dtype=np.float32)
    out = s(x)  # 3 faces through a batch-1 artifact: chunked
    assert out["logits"].shape == (3, 19, 56, 56) and out["logits"].dtype == np.float32
    np.testing.assert_allclose(out["logits"], _expected(w, x), atol=1e-4)
    with pytest.raises(ValueError, match=r"\(B, 3, 224, 224\)"):
        s(x[:, :, :100])


def test_fixed_batch_padding_and_dynamic(tmp_path):
    from farl_edge.runtime import load

    w = make_artifact(tmp_path / "b4", batch=4)
    x = np.random.default_rng(2).random((5, 3, S, S), dtype=np.float32)
    s = load(tmp_path / "b4")
    assert s.batch == 4
    np.testing.assert_allclose(s(x)["logits"], _expected(w, x), atol=1e-4)
    w = make_artifact(tmp_path / "dyn", batch=None)
    s = load(tmp_path / "dyn")
    assert s.batch is None
    np.testing.assert_allclose(s(x)["logits"], _expected(w, x), atol=1e-4)


def test_tampered_file_is_a_clear_error(tmp_path):
    from farl_edge.runtime import ArtifactError, load

    w = make_artifact(tmp_path / "a")
    model = tmp_path / "a" / "model.onnx"
    data = bytearray(model.read_bytes())
    at = bytes(data).index(w.tobytes())  # flip one bit of one weight: still a valid model
    data[at + 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"corrupt artifact .*model\.onnx: sha256"):
        load(tmp_path / "a")
    load(tmp_path / "a", verify=False)  # the caller may skip the check explicitly


def test_missing_file_and_bad_manifest(tmp_path):
    from farl_edge.runtime import ArtifactError, load

    make_artifact(tmp_path / "a")
    (tmp_path / "a" / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="model.onnx: missing"):
        load(tmp_path / "a")
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load(tmp_path)
    with pytest.raises(ArtifactError, match="no such folder"):
        load(tmp_path / "nowhere")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load(tmp_path / "b")


def test_failed_artifact_refused(tmp_path):
    from farl_edge.runtime import ArtifactError, load

    make_artifact(tmp_path / "a", status="failed")
    with pytest.raises(ArtifactError, match="marked 'failed'"):
        load(tmp_path / "a")
    assert load(tmp_path / "a", allow_failed=True).manifest["status"] == "failed"


def test_unknown_backend_and_option(tmp_path):
    from farl_edge.runtime import ArtifactError, load

    make_artifact(tmp_path / "a", backend="tensorrt-of-the-future")
    with pytest.raises(ArtifactError, match="unknown runtime backend"):
        load(tmp_path / "a")
    make_artifact(tmp_path / "b")
    with pytest.raises(ValueError, match="unknown onnxruntime options"):
        load(tmp_path / "b", warp_speed=9)


def test_manifest_hashes_every_file(tmp_path):
    from farl_edge.runtime import sha256_file

    make_artifact(tmp_path / "a")
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert set(m["files"]) == {"model.onnx"}
    assert m["files"]["model.onnx"]["sha256"] == sha256_file(tmp_path / "a" / "model.onnx")
    assert m["format"] == "farl-edge-artifact" and "onnxruntime" in m["versions"]


def test_import_runtime_is_torch_free():
    code = ("import sys, farl_edge.runtime, farl_edge.runtime.backends; "
            "from farl_edge.runtime.backends import onnxruntime_backend, openvino_backend; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_eval_uses_the_runtime_session(tmp_path, celebm_val_dir):
    """`farl-edge eval --model <artifact>` opens the artifact through farl_edge.runtime.load."""
    from farl_edge.cli import main

    make_artifact(tmp_path / "a")
    out = tmp_path / "m.json"
    assert main(["eval", "--model", str(tmp_path / "a"), "--data", str(celebm_val_dir), "--limit", "2",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "farl-small-celebm" and result["n"] == 2
