"""Bad requests: one clear line on stderr, exit status 2, and no artifact (or staging folder) left."""
from __future__ import annotations

from pathlib import Path

import pytest
from export_fixtures import ALIGN, eval_dir, leftovers

from farl_edge.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _fails(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("farl-edge export: error:"), err
    for n in needles:
        assert n in err, err
    return err


def test_unknown_model(tmp_path, capsys):
    _fails(capsys, ["export", "--model", "no-such-model", "--target", "onnx", "--output", str(tmp_path / "a")],
           "unknown model 'no-such-model'")
    assert leftovers(tmp_path) == []


def test_unknown_target_and_precision(tmp_path, capsys):
    _fails(capsys, ["export", "--model", ALIGN, "--target", "tflite", "--output", str(tmp_path / "a")],
           "unknown target 'tflite'")
    _fails(capsys, ["export", "--model", ALIGN, "--target", "openvino", "--precision", "int8", "--int8-mode",
                    "dynamic", "--output", str(tmp_path / "a")], "int8-mode")
    assert leftovers(tmp_path) == []


def test_missing_calibration_folder(tmp_path, capsys):
    _fails(capsys, ["export", "--model", ALIGN, "--target", "onnx", "--precision", "int8", "--calib",
                    str(tmp_path / "nope"), "--output", str(tmp_path / "a")], "does not exist")
    assert leftovers(tmp_path) == []


def test_calibration_folder_without_images(tmp_path, capsys):
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "notes.txt").write_text("no faces here")
    _fails(capsys, ["export", "--model", ALIGN, "--target", "onnx", "--precision", "int8", "--calib", str(calib),
                    "--eval-data", str(eval_dir(ALIGN)), "--output", str(tmp_path / "a")], "holds no images")
    assert leftovers(tmp_path) == ["calib"]


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    _fails(capsys, ["export", "--model", ALIGN, "--target", "onnx", "--output", str(blocker / "out")],
           "cannot write", "is not a folder")
    assert leftovers(tmp_path) == ["file"]


def test_existing_output_needs_force(tmp_path, capsys):
    out = tmp_path / "a"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _fails(capsys, ["export", "--model", ALIGN, "--target", "onnx", "--output", str(out)], "--force")
    assert leftovers(out) == ["keep.txt"]


def test_bad_batch_and_recipe(tmp_path, capsys):
    _fails(capsys, ["export", "--model", ALIGN, "--target", "onnx", "--batch", "zero", "--output",
                    str(tmp_path / "a")], "--batch")
    _fails(capsys, ["export", "--model", ALIGN, "--recipe", "export/no-such-recipe"], "no recipe", "known recipes")
    _fails(capsys, ["export", "--model", ALIGN, "--target", "onnx", "--max-drop", "0.5", "--output",
                    str(tmp_path / "a")], "max-drop")
    assert leftovers(tmp_path) == []


def interrupted_builder(job):
    (job.folder / "model.onnx").write_bytes(b"half a model")
    raise KeyboardInterrupt


def test_builder_crash_leaves_nothing(tmp_path, monkeypatch):
    """An exporter that dies half way (or an interrupt) leaves no folder that looks finished."""
    import dataclasses

    from farl_edge.export import formats
    from farl_edge.export.pipeline import export
    from farl_edge.export.request import ExportRequest

    fmt = dataclasses.replace(formats.FORMATS["onnx"], builder=f"{__name__}:interrupted_builder")
    monkeypatch.setitem(formats.FORMATS, "onnx", fmt)

    with pytest.raises(KeyboardInterrupt):
        export(ExportRequest(model=ALIGN, target="onnx", precision="fp32", output=tmp_path / "a",
                             eval_data=eval_dir(ALIGN), eval_size=2, pretrained=False, log=lambda m: None))
    assert leftovers(tmp_path) == []


def junk_builder(job):
    from farl_edge.export.formats import BuildResult

    (job.folder / "model.onnx").write_bytes(b"not a model")
    return BuildResult(model_file="model.onnx")


def test_validation_crash_keeps_its_traceback(tmp_path, monkeypatch):
    """An artifact that crashes the validation run fails validation; the manifest keeps the whole
    traceback, not only the one-line error."""
    import dataclasses
    import json

    import farl_edge.runtime as rt
    from farl_edge.export import formats
    from farl_edge.export.pipeline import export
    from farl_edge.export.request import ExportRequest
    from farl_edge.export.validate import ParityError

    def crashing_load(*args, **kwargs):
        raise RuntimeError("the runtime fell over")

    fmt = dataclasses.replace(formats.FORMATS["onnx"], builder=f"{__name__}:junk_builder")
    monkeypatch.setitem(formats.FORMATS, "onnx", fmt)
    monkeypatch.setattr(rt, "load", crashing_load)
    out = tmp_path / "a"
    with pytest.raises(ParityError):
        export(ExportRequest(model=ALIGN, target="onnx", precision="fp32", output=out, eval_data=eval_dir(ALIGN),
                             eval_size=2, pretrained=False, keep_failed=True, log=lambda m: None))
    validation = json.loads((out / "manifest.json").read_text())["validation"]
    assert "RuntimeError: the runtime fell over" in validation["traceback"]
    assert validation["traceback"].startswith("Traceback") and "crashing_load" in validation["traceback"]


def test_every_recipe_is_valid_and_implemented():
    from farl_edge.export.cli import load_recipe
    from farl_edge.export.formats import ALL_BUILDER_OPTIONS, FORMATS
    from farl_edge.export.pipeline import check_request
    from farl_edge.export.request import ExportRequest

    recipes = sorted((ROOT / "export").glob("*.json"))
    assert len(recipes) >= 4
    all_options = set(ALL_BUILDER_OPTIONS)
    assert all_options <= ExportRequest.recipe_keys()
    for path in recipes:
        r = load_recipe(f"export/{path.stem}")
        fmt = FORMATS[r["target"]]
        assert r.get("precision", "fp32") in fmt.precisions, path
        assert r.get("description"), path
        assert set(r) & all_options <= set(fmt.options), path  # options fit the target
        request = ExportRequest.from_recipe(r, model=ALIGN)  # recipe keys = request fields (+ builder options)
        assert request.target == r["target"] and request.recipe == r
        assert request.options == {k: v for k, v in r.items() if k in all_options}, path
        if not fmt.missing():
            assert check_request(request) is fmt
