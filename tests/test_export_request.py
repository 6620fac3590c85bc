"""One export request: ExportRequest is the recipe schema, the source of the `farl-edge export` flags and
the single argument of export(); the builder options (--compute-capability, --coreml-weights, ...) come
from the formats table. No model is built here: these are the request's own rules."""
from __future__ import annotations

import dataclasses
import json

import pytest

from farl_edge.cli import UserError, build_parser
from farl_edge.export.cli import load_recipe, request_from_args
from farl_edge.export.formats import BUILDER_OPTIONS, FORMATS, option_groups
from farl_edge.export.request import RECIPE_INFO_KEYS, ExportRequest

ALIGN = "farl-small-300w"


def _request(*argv: str) -> ExportRequest:
    return request_from_args(build_parser().parse_args(["export", "--model", ALIGN, *argv]))


def test_defaults_are_the_old_defaults():
    r = _request("--target", "onnx")
    assert (r.model, r.target, r.precision, r.batch, r.calib_size, r.eval_size, r.int8_mode) == (
        ALIGN, "onnx", "fp32", 1, 64, 32, "static")
    assert r.pretrained and not r.force and not r.keep_failed and not r.require_validation
    assert r.options == {} and r.recipe is None and r.int8_op_types is None and r.tolerance_overrides is None


def test_flags_fill_the_request():
    r = _request("--target", "tensorrt-rtx", "--precision", "int8", "--batch", "dynamic", "--calib-size", "8",
                 "--eval-size", "4", "--int8-ops", "MatMul, Conv", "--random-init", "--force", "--keep-failed",
                 "--require-validation", "--compute-capability", "sm89", "--max-batch", "8",
                 "--builder-optimization-level", "3", "--output", "out", "--checkpoint", "w.safetensors",
                 "--exporter", "torchscript", "--tolerance", "fp16", "--input-size", "256")
    assert (r.target, r.precision, r.batch, r.calib_size, r.eval_size) == ("tensorrt-rtx", "int8", None, 8, 4)
    assert r.int8_op_types == ["MatMul", "Conv"] and r.pretrained is False and r.force and r.keep_failed
    assert r.require_validation and r.output == "out" and r.checkpoint == "w.safetensors"
    assert (r.exporter, r.tolerance, r.input_size) == ("torchscript", "fp16", 256)
    assert r.options == {"compute_capability": "sm89", "max_batch": 8, "builder_optimization_level": 3}
    r = _request("--target", "coreml", "--coreml-weights", "palettize6", "--deployment-target", "iOS17")
    assert r.options == {"coreml_weights": "palettize6", "deployment_target": "iOS17"}


def test_recipe_then_flags():
    r = _request("--recipe", "export/rtx-pc-fp16", "--max-batch", "32", "--eval-size", "4")
    assert (r.target, r.precision, r.batch, r.eval_size) == ("tensorrt-rtx", "fp16", None, 4)
    assert r.options == {"max_batch": 32, "opt_batch": 8}
    assert r.recipe == load_recipe("export/rtx-pc-fp16") and r.recipe["name"] == "export/rtx-pc-fp16"
    r = _request("--recipe", "export/onnxruntime-cpu-int8", "--int8-ops", "MatMul")
    assert r.int8_op_types == ["MatMul"] and r.calib_size == 64 and r.int8_mode == "static"
    r = _request("--recipe", "export/onnxruntime-cpu-int8")
    assert r.int8_op_types == ["MatMul", "Conv", "ConvTranspose"]
    r = _request("--recipe", "export/intel-cpu-bf16", "--target", "onnx", "--precision", "fp16")
    assert (r.target, r.precision, r.inference_precision, r.tolerance) == ("onnx", "fp16", "bf16", "bf16")


def test_recipe_keys_are_request_fields(tmp_path):
    fields = {f.name for f in dataclasses.fields(ExportRequest)}
    options = {o for f in FORMATS.values() for o in f.options}
    assert ExportRequest.recipe_keys() == (set(ExportRequest.recipe_fields()) | options | set(RECIPE_INFO_KEYS))
    assert set(ExportRequest.recipe_fields()) <= fields and not options & fields
    assert not {"model", "output", "force", "checkpoint", "log", "options", "recipe"} & ExportRequest.recipe_keys()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"target": "onnx", "output": "somewhere"}))
    with pytest.raises(UserError, match=r"unknown keys \['output'\]"):
        load_recipe(str(bad))
    with pytest.raises(ValueError, match="unknown export setting 'colour'"):
        ExportRequest(model=ALIGN).apply({"colour": "blue"})


def test_every_builder_option_is_a_flag_in_its_group():
    parser = build_parser()
    export = parser._subparsers._group_actions[0].choices["export"]  # noqa: SLF001 - argparse has no public way
    groups = {g.title: {a.dest for a in g._group_actions} for g in export._action_groups}  # noqa: SLF001
    assert groups["tensorrt / tensorrt-rtx"] == set(FORMATS["tensorrt"].options)
    assert groups["coreml"] == set(FORMATS["coreml"].options)
    for title, names in option_groups().items():
        assert groups[title] == set(names)
    flags = {s for a in export._actions for s in a.option_strings}  # noqa: SLF001
    assert {BUILDER_OPTIONS[o].flag for o in BUILDER_OPTIONS} <= flags
    assert {"--random-init", "--int8-ops", "--recipe", "--json", "--quiet"} <= flags


@pytest.mark.parametrize("argv,message", [
    (["--target", "onnx", "--coreml-weights", "linear8"], "--coreml-weights do(es) not apply to --target onnx"),
    (["--target", "onnx", "--batch", "0"], "--batch must be a positive integer or 'dynamic'"),
    (["--precision", "fp16"], "pass --target"),
    (["--target", "tflite"], "unknown target 'tflite'"),
    (["--recipe", "export/apple-ane-w8a8", "--target", "onnx"],
     "--coreml-activations, --coreml-weights, --deployment-target do(es) not apply to --target onnx"),
])
def test_request_user_errors(argv, message):
    with pytest.raises(UserError) as e:
        _request(*argv)
    assert message in str(e.value)


def test_export_takes_one_request():
    from farl_edge.export.pipeline import check_request, export

    with pytest.raises(TypeError, match="one ExportRequest"):
        export(ALIGN)  # the old form, export(model, target, precision, **keywords), is gone
    with pytest.raises(ValueError, match="max-drop"):
        check_request(ExportRequest(model=ALIGN, target="onnx", max_drop=0.5))
    with pytest.raises(ValueError, match="--nncf-preset applies to openvino int8 only, not fp32"):
        check_request(ExportRequest(model=ALIGN, target="openvino", precision="fp32",
                                    options={"nncf_preset": "performance"}))
    with pytest.raises(ValueError, match="takes no option coreml_weights"):
        check_request(ExportRequest(model=ALIGN, target="onnx", options={"coreml_weights": "linear8"}))
    with pytest.raises(ValueError, match="calib-size"):
        check_request(ExportRequest(model=ALIGN, target="onnx", eval_size=0))


def test_engine_build_takes_the_tensorrt_options_by_name(tmp_path):
    """EngineBuild (the single argument of build_engine) names the TensorRT builder options as the formats
    table does; from_options keeps the defaults of unset ones."""
    from farl_edge.export import tensorrt_build as tbuild

    fields = {f.name for f in dataclasses.fields(tbuild.EngineBuild)}
    assert set(FORMATS["tensorrt"].options) <= fields and set(FORMATS["tensorrt-rtx"].options) <= fields
    common = dict(onnx_path=tmp_path / "a.onnx", engine_path=tmp_path / "a.engine", flavour=None, precision="fp16",
                  header={}, batch=None)
    b = tbuild.EngineBuild.from_options({"max_batch": 8, "compute_capability": "sm89", "int8_mode": "static",
                                         "opt_batch": None}, **common)
    assert (b.max_batch, b.opt_batch, b.compute_capability) == (8, None, "sm89")
    b = tbuild.EngineBuild.from_options({}, **common, compute_capability=["sm86"])
    assert b.max_batch == tbuild.DEFAULT_MAX_BATCH and b.compute_capability == ["sm86"] and b.timing_cache is None
