"""`farl-edge export` for targets this machine cannot run (TensorRT engines without an NVIDIA GPU,
Core ML off macOS): the artifact is published ``unvalidated`` with the builder's own checks, and
``farl-edge validate`` completes the parity run where the runtime exists. Also the structural I/O
check both builders use, the target-specific options, and ``--require-validation``."""
from __future__ import annotations

import importlib.util
import warnings

import pytest

from conftest import shared_data
from farl_edge.cli import main
from farl_edge.export.validate import ParityError, check_io
from farl_edge.runtime import ArtifactError, load, read_manifest
from farl_edge.runtime.backends import available_backends

ALIGN = "farl-small-300w"
HAS_RTX = importlib.util.find_spec("tensorrt_rtx_bindings") is not None
HAS_COREML = importlib.util.find_spec("coremltools") is not None
TRT_RUNS_HERE = available_backends()["tensorrt"][0]
COREML_RUNS_HERE = available_backends()["coreml"][0]


def _eval_args():
    return ["--eval-data", str(shared_data("300w", "test-helen")), "--eval-size", "4"]


# ------------------------------------------------------------------------------------------
# check_io: names, then shapes
# ------------------------------------------------------------------------------------------

def test_check_io_accepts_matching_and_dynamic_batch():
    want = {"input": ["batch", 3, 224, 224], "landmarks": ["batch", 68, 2]}
    got = {"input": [-1, 3, 224, 224], "landmarks": [-1, 68, 2]}
    assert check_io("engine", want, got) == got


def test_check_io_rejects_wrong_names_and_shapes():
    want = {"input": [1, 3, 224, 224], "landmarks": [1, 68, 2]}
    with pytest.raises(ParityError, match="names/inputs/outputs"):
        check_io("engine", want, {"input": [1, 3, 224, 224], "points": [1, 68, 2]})
    with pytest.raises(ParityError, match="shapes/landmarks"):
        check_io("engine", want, {"input": [1, 3, 224, 224], "landmarks": [1, 98, 2]})
    with pytest.raises(ParityError, match="shapes/input"):  # a dynamic engine is not the static one asked for
        check_io("engine", want, {"input": [-1, 3, 224, 224], "landmarks": [1, 68, 2]})


# ------------------------------------------------------------------------------------------
# options and refusals (no export runs)
# ------------------------------------------------------------------------------------------

def test_target_options_are_checked(tmp_path, capsys):
    rc = main(["export", "--model", ALIGN, "--target", "onnx", "--compute-capability", "sm89",
               "--output", str(tmp_path / "a")])
    assert rc == 2 and "--compute-capability do(es) not apply to --target onnx" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(TRT_RUNS_HERE, reason="a TensorRT runtime is present: the engine would be validated")
@pytest.mark.skipif(not HAS_RTX, reason="TensorRT for RTX not installed")
def test_require_validation_refuses_before_building(tmp_path, capsys):
    rc = main(["export", "--model", ALIGN, "--target", "tensorrt-rtx", "--precision", "fp16",
               "--require-validation", "--output", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot be validated on this machine" in err and "farl-edge validate" in err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------
# unvalidated artifacts end to end through the CLI
# ------------------------------------------------------------------------------------------

def _export_unvalidated(capsys, out, *args) -> tuple[str, dict]:
    """`farl-edge export ... --output out`: exit 0, status unvalidated; (stdout, manifest)."""
    rc = main(["export", "--model", ALIGN, *args, "--output", str(out), "--quiet", *_eval_args()])
    text = capsys.readouterr().out
    assert rc == 0, text
    m = read_manifest(out)
    assert m["status"] == "unvalidated" and m["validation"]["status"] == "pending"
    return text, m


@pytest.mark.skipif(TRT_RUNS_HERE, reason="a TensorRT runtime is present: the engine would be validated")
@pytest.mark.skipif(not HAS_RTX, reason="TensorRT for RTX not installed")
def test_tensorrt_rtx_export_is_published_unvalidated(tmp_path, capsys):
    out = tmp_path / "rtx-fp16"
    text, m = _export_unvalidated(capsys, out, "--target", "tensorrt-rtx", "--precision", "fp16",
                                  "--compute-capability", "sm89")
    assert "UNVALIDATED" in text and f"farl-edge validate {out} --update" in text
    assert m["target"] == "tensorrt-rtx"
    assert {"model.engine", "model.onnx", "build.log"} <= set(m["files"])
    checks = m["validation"]["builder_checks"]
    assert checks["prepared_graph"]["parity"]["passed"] and checks["prepared_graph"]["onnx_checker"] == "ok"
    assert checks["engine_io"] == {"image": [1, 3, 224, 224], "landmarks": [1, 68, 2], "heatmaps": [1, 68, 56, 56]}
    assert m["build"]["options"] == {"compute_capability": "sm89"}
    assert m["build"]["engine"]["compute_capabilities"] == ["sm89"]
    assert "tensorrt-rtx-cu12-bindings" in m["versions"]
    # opening it here: a warning that it is unvalidated, then the backend's own reason
    with warnings.catch_warnings(record=True) as caught, pytest.raises(ArtifactError, match="NVIDIA GPU"):
        warnings.simplefilter("always")
        load(out)
    assert any("not been compared with PyTorch" in str(w.message) for w in caught)
    # and `farl-edge validate` says why it cannot run here, leaving the manifest alone
    rc = main(["validate", str(out), "--update", *_eval_args()])
    assert rc == 2 and "NVIDIA GPU" in capsys.readouterr().err
    assert read_manifest(out)["status"] == "unvalidated"


@pytest.mark.skipif(COREML_RUNS_HERE, reason="Core ML runs here: the package would be validated")
@pytest.mark.skipif(not HAS_COREML, reason="coremltools not installed")
def test_coreml_export_is_published_unvalidated(tmp_path, capsys):
    _, m = _export_unvalidated(capsys, tmp_path / "coreml-int8", "--target", "coreml", "--precision", "int8",
                               "--coreml-weights", "palettize6")
    assert "macOS" in m["validation"]["reason"]
    spec = m["validation"]["builder_checks"]["spec"]
    assert spec["io"] == {"image": [1, 3, 224, 224], "landmarks": [1, 68, 2], "heatmaps": [1, 68, 56, 56]}
    assert spec["compute precision"] == "fp16" and spec["quantised weight ops"] > 0
    assert m["build"]["options"] == {"coreml_weights": "palettize6"}
    assert "6-bit" in m["build"]["weights"] and m["build"]["deployment_target"] == "iOS17"
    assert "coremltools" in m["versions"]


# ------------------------------------------------------------------------------------------
# farl-edge validate where the runtime exists (ONNX Runtime here)
# ------------------------------------------------------------------------------------------

def test_validate_command_completes_an_unvalidated_artifact(tmp_path, capsys):
    from farl_edge.export import manifest as mf

    out = tmp_path / "onnx-fp32"
    assert main(["export", "--model", ALIGN, "--target", "onnx", "--output", str(out), "--quiet",
                 *_eval_args()]) == 0
    # as if exported on a machine without ONNX Runtime
    m = read_manifest(out)
    m["status"] = "unvalidated"
    m["validation"] = {"status": "pending", "reason": "test", "tolerance_set": "fp32"}
    mf.write_manifest(out, m)
    capsys.readouterr()
    assert main(["validate", str(out), "--update", *_eval_args()]) == 0
    text = capsys.readouterr().out
    assert "validation passed on 4 faces" in text and "unvalidated → ok" in text
    m = read_manifest(out)
    assert m["status"] == "ok" and m["validation"]["passed"] and m["validation"]["previous_status"] == "unvalidated"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # validated: opens without the warning
        assert load(out).validated
    # other weights than the artifact's: validation fails, exit 1, and --update marks it failed
    import torch

    from farl_edge.checkpoint import save_checkpoint
    from farl_edge.models import create_model

    torch.manual_seed(1)
    other = tmp_path / "other.safetensors"
    save_checkpoint(create_model(ALIGN, pretrained=False), other)
    capsys.readouterr()
    assert main(["validate", str(out), "--update", "--checkpoint", str(other), *_eval_args()]) == 1
    assert "validation FAILED" in capsys.readouterr().out
    m = read_manifest(out)
    assert m["status"] == "failed" and m["failure"].startswith("validation failed")
    with pytest.raises(ArtifactError, match="marked 'failed'"):
        load(out)
