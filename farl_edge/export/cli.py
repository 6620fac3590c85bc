"""``farl-edge export`` (and ``farl-edge formats``): registered by farl_edge.cli.

Exit status: 0 exported and validated; 1 validation failed (table on stderr); 2 user error.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from farl_edge.export.formats import ALL_BUILDER_OPTIONS, FORMATS

RECIPE_KEYS = {"description", "target", "precision", "calib", "calib_size", "input_size", "batch", "max_drop",
               "int8_mode", "int8_op_types", "eval_data", "eval_size", "exporter", "inference_precision",
               "tolerance", "tolerance_overrides", "keep_failed", "require_validation", "notes",
               *ALL_BUILDER_OPTIONS}
DEFAULTS = {"precision": "fp32", "calib_size": 64, "batch": "1", "int8_mode": "static", "eval_size": 32}


def _shipped_recipes() -> dict[str, object]:
    """Recipes installed with the package (the project's export/ folder, as ``farl_edge.recipes``)."""
    from importlib import resources

    try:
        folder = resources.files("farl_edge.recipes")
    except ModuleNotFoundError:
        return {}
    return {p.name.removesuffix(".json"): p for p in folder.iterdir() if p.name.endswith(".json")}


def load_recipe(name: str) -> dict:
    """``export/intel-cpu-int8`` / ``intel-cpu-int8`` (shipped) or a path to a .json file → recipe dict."""
    from farl_edge.cli import UserError

    user = next((p for p in (Path(name), Path(name + ".json")) if p.is_file()), None)
    shipped = _shipped_recipes()
    stem = Path(name).name.removesuffix(".json")
    if user is not None and stem in shipped and Path(str(shipped[stem])).resolve() == user.resolve():
        user = None  # the shipped file itself, named by its path in a checkout
    path = user or shipped.get(stem)
    if path is None:
        known = ", ".join(f"export/{k}" for k in sorted(shipped))
        raise UserError(f"no recipe {name!r} (not a file, not a shipped recipe); known recipes: {known or 'none'}")
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"recipe {path} is not valid JSON: {e}") from None
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise UserError(f"recipe {path} has unknown keys {sorted(unknown)}; known: {sorted(RECIPE_KEYS)}")
    if "target" not in recipe:
        raise UserError(f"recipe {path} does not name a target")
    return {"name": str(path) if user else f"export/{stem}", **recipe}


def _batch(value) -> int | None:
    from farl_edge.cli import UserError

    if value is None or str(value) == "dynamic":
        return None
    try:
        b = int(value)
    except ValueError:
        raise UserError(f"--batch must be a positive integer or 'dynamic', not {value!r}") from None
    if b < 1:
        raise UserError(f"--batch must be a positive integer or 'dynamic', not {value!r}")
    return b


def cmd_export(args) -> int:
    from farl_edge.cli import UserError
    from farl_edge.registry import UnknownModelError

    recipe = load_recipe(args.recipe) if args.recipe else {}
    settings = {**DEFAULTS, **{k: v for k, v in recipe.items() if k not in ("name", "description", "notes")}}
    for key in ("target", "precision", "calib", "calib_size", "input_size", "batch", "max_drop", "int8_mode",
                "eval_data", "eval_size", "exporter", "inference_precision", "tolerance"):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    if args.keep_failed:
        settings["keep_failed"] = True
    if args.require_validation:
        settings["require_validation"] = True
    all_options = sorted(ALL_BUILDER_OPTIONS)
    for key in all_options:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    options = {k: settings[k] for k in all_options if settings.get(k) is not None}
    if args.int8_ops:
        settings["int8_op_types"] = [s.strip() for s in args.int8_ops.split(",") if s.strip()]
    if not settings.get("target"):
        raise UserError("pass --target (" + "|".join(FORMATS) + ") or --recipe")
    if settings["target"] not in FORMATS:
        raise UserError(f"unknown target {settings['target']!r}; known: {', '.join(FORMATS)}")
    wrong = sorted(set(options) - set(FORMATS[settings["target"]].options))
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise UserError(f"{flags} do(es) not apply to --target {settings['target']}")
    if settings.get("calib") and not Path(settings["calib"]).is_dir():
        raise UserError(f"calibration folder {settings['calib']} does not exist" if not Path(settings["calib"]).exists()
                        else f"calibration data {settings['calib']} is not a folder")
    from farl_edge.export.pipeline import export
    from farl_edge.export.validate import ParityError

    log = (lambda msg: None) if args.quiet else (lambda msg: print(f"[export] {msg}", file=sys.stderr))
    try:
        result = export(
            args.model, settings["target"], settings["precision"], output=args.output,
            batch=_batch(settings.get("batch")), input_size=settings.get("input_size"), checkpoint=args.checkpoint,
            pretrained=not args.random_init, calib=settings.get("calib"), calib_size=int(settings["calib_size"]),
            eval_data=settings.get("eval_data"), eval_size=int(settings["eval_size"]),
            int8_mode=settings["int8_mode"], int8_op_types=settings.get("int8_op_types"),
            max_drop=settings.get("max_drop"), exporter=settings.get("exporter"),
            inference_precision=settings.get("inference_precision"), tolerance=settings.get("tolerance"),
            tolerance_overrides=settings.get("tolerance_overrides"), keep_failed=bool(settings.get("keep_failed")),
            require_validation=bool(settings.get("require_validation")), options=options,
            force=args.force, recipe=recipe or None, log=log)
    except UnknownModelError as e:
        raise UserError(str(e)) from None
    except ParityError as e:
        print(f"farl-edge export: error: {e}", file=sys.stderr)
        where = "kept, marked failed" if settings.get("keep_failed") else "removed"
        print(f"farl-edge export: the artifact was {where}", file=sys.stderr)
        return 1
    if result.report is not None:
        print(result.report.table())
        print(f"exported {result.path} ({result.manifest['target']} {result.manifest['precision']}, "
              f"{result.seconds:.0f} s)")
    else:
        validation = result.manifest["validation"]
        print(f"builder checks passed: {', '.join(validation['builder_checks']) or 'none'}")
        print(f"exported {result.path} ({result.manifest['target']} {result.manifest['precision']}, "
              f"{result.seconds:.0f} s) — UNVALIDATED: {validation['reason']}")
        print(f"  on the target machine: farl-edge validate {result.path} --update")
    if args.json:
        from farl_edge.fileio import atomic_write_json

        atomic_write_json(Path(args.json), {"path": str(result.path), "manifest": result.manifest})
    return 0


def cmd_validate(args) -> int:
    """Re-run the parity validation of an artifact here (e.g. an unvalidated engine on its GPU)."""
    import platform

    from farl_edge.cli import UserError
    from farl_edge.export import manifest as mf
    from farl_edge.export.validate import validate_artifact
    from farl_edge.runtime import ArtifactError, read_manifest

    folder = Path(args.artifact)
    try:
        manifest = read_manifest(folder)
    except ArtifactError as e:
        raise UserError(str(e)) from None
    model = None
    if args.checkpoint:
        from farl_edge.export.pipeline import resolve_model

        model, _ = resolve_model(manifest["model"]["name"], checkpoint=args.checkpoint,
                                 input_size=int(manifest["input_size"]))
    try:
        report = validate_artifact(folder, model, eval_data=args.eval_data, eval_size=args.eval_size,
                                   tolerance=args.tolerance, raise_on_fail=False)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(report.table())
    verdict = "passed" if report.passed else "FAILED"
    print(f"{folder}: validation {verdict} on {report.faces} faces ({manifest['target']} {manifest['precision']})")
    if args.update:
        previous = manifest.get("status")
        manifest["status"] = "ok" if report.passed else "failed"
        manifest["validation"] = {"tolerance_set": args.tolerance or manifest.get("validation", {}).get(
            "tolerance_set") or manifest["precision"], "validated_on": platform.node(),
                                  "previous_status": previous, **report.to_dict()}
        if not report.passed:
            manifest["failure"] = report.failure
        else:
            manifest.pop("failure", None)
        mf.write_manifest(folder, manifest)
        print(f"manifest status: {previous} → {manifest['status']}")
    return 0 if report.passed else 1


def cmd_formats(args) -> int:
    from farl_edge.runtime.backends import available_backends

    backends = available_backends()
    rows = [("target", "precisions", "build needs", "run needs", "backend", "extra", "build here", "run here")]
    for f in FORMATS.values():
        missing = f.missing()
        if not missing and f.notes.get("build_check"):  # hardware besides the modules (e.g. a GPU)
            module, _, func = f.notes["build_check"].partition(":")
            can, reason = getattr(__import__("importlib").import_module(module), func)()
            missing = [] if can else [reason]
        ok, why = backends.get(f.backend, (False, "no backend"))
        rows.append((f.target, ",".join(f.precisions), f.notes.get("build_needs", "CPU"),
                     f.notes.get("run_needs", "CPU"), f.backend, f"farl-edge[{f.extra}]",
                     "yes" if not missing else "no (" + ",".join(missing) + ")", "yes" if ok else f"no ({why})"))
    if args.json:
        print(json.dumps([dict(zip(rows[0], r)) for r in rows[1:]], indent=2))
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a model to an edge format, validated against PyTorch",
                              description="Export, then validate the artifact beside the PyTorch model on real faces "
                                          "(exit 1 with a table when it does not match).")
    p.add_argument("--model", required=True, help="registry name or .safetensors checkpoint")
    p.add_argument("--checkpoint", help="weights for a registry name (default: the shipped weights)")
    p.add_argument("--random-init", action="store_true", help="no weights (testing the toolchain only)")
    p.add_argument("--recipe", help="settings from a recipe file, e.g. export/intel-cpu-int8 (flags override it)")
    p.add_argument("--target", help="|".join(FORMATS))
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="default fp32")
    p.add_argument("--calib", help="calibration faces: an annotated data set or a folder of face images "
                                   "(default: ../shared/data train split)")
    p.add_argument("--calib-size", type=int, help="calibration faces (default 64)")
    p.add_argument("--int8-mode", choices=["static", "dynamic"], help="onnx int8: static QDQ (default) or dynamic")
    p.add_argument("--int8-ops", help="onnx static / openvino / tensorrt int8: ONNX op types to quantise, "
                                        "comma-separated (MatMul,Conv,ConvTranspose), or 'all'; the rest stays float")
    p.add_argument("--max-drop", type=float, help="openvino int8: accuracy-controlled PTQ, max metric drop "
                                                  "(NME_io or F1 points)")
    p.add_argument("--input-size", type=int, help="input size (position embeddings resized once)")
    p.add_argument("--batch", help="fixed batch N (default 1) or 'dynamic'")
    p.add_argument("--eval-data", help="annotated faces for validation (default ../shared/data test split)")
    p.add_argument("--eval-size", type=int, help="faces used in validation (default 32)")
    p.add_argument("--exporter", choices=["dynamo", "torchscript"], help="torch.onnx exporter (default dynamo)")
    p.add_argument("--inference-precision", choices=["f32", "bf16", "f16", "default"],
                   help="openvino: precision the artifact is validated and run with (default f32 for fp32)")
    p.add_argument("--tolerance", choices=["fp32", "fp16", "bf16", "int8"], help="tolerance set (default: precision)")
    p.add_argument("--output", help="artifact folder (default artifacts/<model>-<target>-<precision>)")
    p.add_argument("--force", action="store_true", help="replace an existing artifact folder")
    p.add_argument("--keep-failed", action="store_true", help="keep an artifact that fails validation (marked failed)")
    p.add_argument("--require-validation", action="store_true",
                   help="refuse to publish an artifact this machine cannot run (default: publish it 'unvalidated')")
    g = p.add_argument_group("tensorrt / tensorrt-rtx")
    g.add_argument("--compute-capability", help="GPU architectures to build for, e.g. sm89 or sm86,sm89 "
                                                "(tensorrt-rtx; default: the GPU here, else all supported)")
    g.add_argument("--max-batch", type=int, help="--batch dynamic: profile max (default 16)")
    g.add_argument("--opt-batch", type=int, help="--batch dynamic: profile opt (default min(8, max))")
    g.add_argument("--timing-cache", help="timing cache file to reuse and update (tensorrt)")
    g.add_argument("--builder-optimization-level", type=int, choices=range(0, 6), metavar="0-5")
    g.add_argument("--workspace-mb", type=int, help="builder workspace limit")
    g = p.add_argument_group("coreml")
    g.add_argument("--coreml-weights", choices=["linear8", "palettize8", "palettize6", "palettize4"],
                   help="weight compression (int8 default linear8; also applies to fp16)")
    g.add_argument("--coreml-activations", choices=["auto", "int8", "fp16"],
                   help="int8: auto = W8A8 where Core ML runs (macOS), else W8")
    g.add_argument("--deployment-target", help="minimum deployment target, e.g. iOS17 (default iOS16, int8 iOS17)")
    p.add_argument("--json", help="write the manifest of the result here")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("validate", help="compare an exported artifact with PyTorch on this machine",
                              description="Run the export's parity validation on an existing artifact (names, "
                                          "shapes, values, task metric) with this machine's runtime — e.g. a "
                                          "TensorRT engine exported unvalidated on a CPU machine. Exit 1 on failure.")
    p.add_argument("artifact", help="artifact folder")
    p.add_argument("--checkpoint", help="the weights it was exported from (default: the manifest's record)")
    p.add_argument("--eval-data", help="annotated faces (default ../shared/data test split)")
    p.add_argument("--eval-size", type=int, default=32, help="faces (default 32)")
    p.add_argument("--tolerance", choices=["fp32", "fp16", "bf16", "int8"], help="default: the export's")
    p.add_argument("--update", action="store_true", help="write the result into the manifest (status ok / failed)")
    p.set_defaults(func=cmd_validate)

    p = subparsers.add_parser("formats", help="list export targets, precisions and what is installed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_formats)
