"""Android targets (ExecuTorch .pte, LiteRT .tflite): export → parity validation → evaluation through
the runtime equal to PyTorch's on real faces; a tampered model file is refused.

Both runtimes run on x86 too (XNNPACK), so everything here is real, not structural. Needs the
``android`` extra (in ``dev``); skips naming the missing package otherwise.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_data

MODEL = "farl-small-300w"
# Float exports cost minutes each: the default run keeps one, the rest are ``extended``.
FLOAT_ROWS = [pytest.param("executorch", "fp32", marks=pytest.mark.extended),
              pytest.param("litert", "fp32", marks=pytest.mark.extended), ("litert", "fp16")]
EVAL_FACES = 16
NME_GATE = {"fp32": 0.005, "fp16": 0.02, "int8": 0.1}  # |Δnme_io|, the export tolerances (config.py)


def _export(target: str, precision: str, out):
    from farl_edge.export import ExportRequest, export
    from farl_edge.export.formats import FORMATS

    missing = FORMATS[target].missing()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (pip install 'farl-edge[android]')")
    export(ExportRequest(model=MODEL, target=target, precision=precision, output=out, eval_size=8, calib_size=16,
                         eval_data=shared_data("300w", "test-helen"), log=lambda *_: None))
    return out


@pytest.fixture(scope="module", params=[("executorch", "int8"), ("litert", "int8")], ids=lambda p: "-".join(p))
def int8_artifact(request, tmp_path_factory):
    target, precision = request.param
    return target, precision, _export(target, precision, tmp_path_factory.mktemp(target) / "art")


def test_android_artifact_opens_in_a_fresh_process(int8_artifact):
    """The runtime side alone (no exporter imported): e.g. the int8 program's (de)quantise kernels
    must be registered by the backend itself."""
    import subprocess
    import sys

    _, _, artifact = int8_artifact
    code = ("import numpy as np; from farl_edge.runtime import load; s = load(%r); "
            "out = s(np.zeros((1, 3, s.input_size, s.input_size), np.float32)); print(sorted(out))") % str(artifact)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "['heatmaps', 'landmarks']" in proc.stdout


def _eval_both(artifact):
    from farl_edge.datasets import open_dataset
    from farl_edge.evaluate import evaluate
    from farl_edge.models import create_model
    from farl_edge.models.predictor import TorchPredictor
    from farl_edge.runtime import load

    samples = list(open_dataset(shared_data("300w", "test-helen")))[-EVAL_FACES:]  # not the export's own faces
    ref = evaluate(TorchPredictor(create_model(MODEL)), samples, progress=False)
    got = evaluate(load(artifact), samples, progress=False)
    return ref, got


def test_android_int8_export_validates_and_evaluates_like_pytorch(int8_artifact):
    from farl_edge.runtime import load

    target, precision, artifact = int8_artifact
    session = load(artifact)
    assert session.validated and session.manifest["target"] == target and session.precision == precision
    build = session.manifest["build"]
    if target == "executorch":
        assert build["xnnpack_partitions"] > 0 and build["calibration_faces"] == 16
    else:
        assert build["ops"]["QUANTIZE"] > 0 and build["calibration_faces"] == 16
    ref, got = _eval_both(artifact)
    assert got["n"] == ref["n"] == EVAL_FACES
    assert abs(got["nme_io"] - ref["nme_io"]) <= NME_GATE[precision], (ref["nme_io"], got["nme_io"])


def test_tampered_android_model_file_is_refused(int8_artifact, tmp_path):
    import shutil

    from farl_edge.runtime import ArtifactError, load

    _, _, artifact = int8_artifact
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    model_file = copy / load(artifact).manifest["model_file"]
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=model_file.name):
        load(copy)


@pytest.mark.slow
@pytest.mark.parametrize("target, precision", FLOAT_ROWS)
def test_android_float_exports_match_pytorch(target, precision, tmp_path):
    artifact = _export(target, precision, tmp_path / "art")
    from farl_edge.runtime import load

    assert load(artifact).validated
    ref, got = _eval_both(artifact)
    assert abs(got["nme_io"] - ref["nme_io"]) <= NME_GATE[precision]


def test_android_targets_in_the_formats_table():
    from farl_edge.export.formats import FORMATS
    from farl_edge.runtime.backends import BACKENDS

    assert FORMATS["executorch"].precisions == ("fp32", "int8") and FORMATS["executorch"].backend == "executorch"
    assert FORMATS["litert"].precisions == ("fp32", "fp16", "int8") and FORMATS["litert"].backend == "litert"
    assert {"executorch", "litert"} <= set(BACKENDS)
    assert np.all([FORMATS[t].extra == "android" for t in ("executorch", "litert")])
