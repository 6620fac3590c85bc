"""``farl-edge export`` (and ``farl-edge formats``): registered by farl_edge.cli.

Exit status: 0 exported and validated; 1 validation failed (table on stderr); 2 user error.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from farl_edge.export.formats import FORMATS
from farl_edge.export.request import ExportRequest
from farl_edge.registry import ModelConfig


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
    known = ExportRequest.recipe_keys()  # the request's recipe fields, the formats' builder options, description, notes
    unknown = set(recipe) - known
    if unknown:
        raise UserError(f"recipe {path} has unknown keys {sorted(unknown)}; known: {sorted(known)}")
    if "target" not in recipe:
        raise UserError(f"recipe {path} does not name a target")
    return {"name": str(path) if user else f"export/{stem}", **recipe}


def request_from_args(args) -> ExportRequest:
    """The export request of a command line: defaults, then the recipe (``--recipe``), then the flags."""
    from farl_edge.cli import UserError

    recipe = load_recipe(args.recipe) if args.recipe else {}
    flags = ExportRequest.flag_settings(args)
    try:
        request = ExportRequest.from_recipe(recipe, model=args.model, **flags)
    except ValueError as e:  # --batch zero
        raise UserError(str(e)) from None
    if not request.target:
        raise UserError("pass --target (" + "|".join(FORMATS) + ") or --recipe")
    if request.target not in FORMATS:
        raise UserError(f"unknown target {request.target!r}; known: {', '.join(FORMATS)}")
    wrong = sorted(set(request.options) - set(FORMATS[request.target].options))
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise UserError(f"{flags} do(es) not apply to --target {request.target}")
    if request.calib and not Path(request.calib).is_dir():
        raise UserError(f"calibration folder {request.calib} does not exist" if not Path(request.calib).exists()
                        else f"calibration data {request.calib} is not a folder")
    return request


def cmd_export(args) -> int:
    from farl_edge.cli import UserError
    from farl_edge.registry import UnknownModelError

    request = request_from_args(args)
    from farl_edge.export.pipeline import export
    from farl_edge.export.validate import ParityError

    if args.quiet:
        request.log = lambda msg: None
    else:
        request.log = lambda msg: print(f"[export] {msg}", file=sys.stderr)
    try:
        result = export(request)
    except UnknownModelError as e:
        raise UserError(str(e)) from None
    except ParityError as e:
        print(f"farl-edge export: error: {e}", file=sys.stderr)
        where = "kept, marked failed" if request.keep_failed else "removed"
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

        card = ModelConfig.from_dict(manifest["model"])
        model, _ = resolve_model(card.name, checkpoint=args.checkpoint, input_size=card.input_size,
                                 protocol=card.preprocess.protocol)
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
    ExportRequest.add_arguments(p)  # every request field with a flag, then the formats' builder options
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
