"""``ExportRequest``: one export, as data. The single argument of
:func:`farl_edge.export.pipeline.export`, the schema of the recipe files (``export/*.json``) and
the source of the ``farl-edge export`` flags.

Each field says in its metadata whether it is a recipe key (``recipe``) and how it appears on the
command line (``flag``, ``help``, argparse ``type`` / ``choices`` / ``action``, and ``parse`` for
values given as text: ``--batch dynamic``, ``--int8-ops MatMul,Conv``). The target-specific builder
options (``--compute-capability``, ``--coreml-weights``, ...) are not fields: they live in the
formats table (:data:`farl_edge.export.formats.BUILDER_OPTIONS`, ``Format.options``) and land in
``options``; in a recipe and on the command line they are flat keys / flags, as before.

A recipe is the request's recipe fields plus ``description`` / ``notes``; any other key is an
error (:meth:`ExportRequest.recipe_keys`).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from farl_edge.errors import UserError
from farl_edge.export.formats import BUILDER_OPTIONS, FORMATS, option_groups

RECIPE_INFO_KEYS = ("description", "notes")  # read by people, recorded in the manifest, not settings


def parse_batch(value) -> int | None:
    """``1`` / ``"8"`` → 8; ``"dynamic"`` / None → None (dynamic batch). UserError otherwise."""
    if value is None or str(value) == "dynamic":
        return None
    try:
        b = int(value)
    except ValueError:
        raise UserError(f"--batch must be a positive integer or 'dynamic', not {value!r}") from None
    if b < 1:
        raise UserError(f"--batch must be a positive integer or 'dynamic', not {value!r}")
    return b


def parse_op_types(value) -> list[str] | None:
    """``"MatMul, Conv"`` → ["MatMul", "Conv"]; a list stays a list."""
    if value is None or isinstance(value, (list, tuple)):
        return None if value is None else list(value)
    return [s.strip() for s in str(value).split(",") if s.strip()]


def _opt(default: Any = None, *, flag: str | None = None, help: str | None = None, recipe: bool = True,
         parse: Callable | None = None, factory: Callable | None = None, **argparse_kw):
    """A request field: its default, whether recipes may set it, its --flag (None: no flag)."""
    meta = {"recipe": recipe, "flag": flag, "help": help, "parse": parse, "argparse": argparse_kw}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(kw_only=True)
class ExportRequest:
    """Everything one export needs. Fields are in the order of ``farl-edge export --help``."""

    model: Any = _opt(recipe=False, flag="--model", help="registry name or .safetensors checkpoint",
                      required=True)  # a registry name, a ModelConfig, a .safetensors path or a FaRLModel
    checkpoint: str | Path | None = _opt(
        recipe=False, flag="--checkpoint", help="weights for a registry name (default: the shipped weights)")
    pretrained: bool = _opt(True, recipe=False, flag="--random-init", action="store_false",
                            help="no weights (testing the toolchain only)")
    recipe: dict | None = _opt(recipe=False, flag="--recipe",
                               help="settings from a recipe file, e.g. export/intel-cpu-int8 (flags override it)")
    target: str | None = _opt(flag="--target", help="|".join(FORMATS))
    precision: str = _opt("fp32", flag="--precision", choices=["fp32", "fp16", "int8"], help="default fp32")
    calib: str | Path | None = _opt(flag="--calib", help="calibration faces: an annotated data set or a folder of "
                                                         "face images (default: ../shared/data train split)")
    calib_size: int = _opt(64, flag="--calib-size", type=int, parse=int, help="calibration faces (default 64)")
    int8_mode: str = _opt("static", flag="--int8-mode", choices=["static", "dynamic"],
                          help="onnx int8: static QDQ (default) or dynamic")
    int8_op_types: list[str] | None = _opt(
        flag="--int8-ops", parse=parse_op_types,
        help="onnx static / openvino / tensorrt int8: ONNX op types to quantise, comma-separated "
             "(MatMul,Conv,ConvTranspose), or 'all'; the rest stays float")
    max_drop: float | None = _opt(flag="--max-drop", type=float, help="openvino int8: accuracy-controlled PTQ, "
                                                                      "max metric drop (NME_io or F1 points)")
    input_size: int | None = _opt(flag="--input-size", type=int, help="input size (position embeddings resized once)")
    protocol: str | None = _opt(flag="--protocol", choices=["farl", "direct"],
                                help="preprocessing protocol: farl (512 crop, resized to the network inside the "
                                     "graph: FaRL's numbers) or direct (crop at the network size: the fast edge "
                                     "path); default: the model's own")
    batch: int | None = _opt(1, flag="--batch", parse=parse_batch, help="fixed batch N (default 1) or 'dynamic'")
    eval_data: str | Path | None = _opt(flag="--eval-data", help="annotated faces for validation "
                                                                 "(default ../shared/data test split)")
    eval_size: int = _opt(32, flag="--eval-size", type=int, parse=int, help="faces used in validation (default 32)")
    exporter: str | None = _opt(flag="--exporter", choices=["dynamo", "torchscript"],
                                help="torch.onnx exporter (default dynamo)")
    inference_precision: str | None = _opt(
        flag="--inference-precision", choices=["f32", "bf16", "f16", "default"],
        help="openvino: precision the artifact is validated and run with (default f32 for fp32)")
    tolerance: str | None = _opt(flag="--tolerance", choices=["fp32", "fp16", "bf16", "int8"],
                                 help="tolerance set (default: precision)")
    tolerance_overrides: dict | None = _opt()  # recipe only: single tolerance fields
    output: str | Path | None = _opt(recipe=False, flag="--output",
                                     help="artifact folder (default artifacts/<model>-<target>-<precision>)")
    force: bool = _opt(False, recipe=False, flag="--force", action="store_true",
                       help="replace an existing artifact folder")
    keep_failed: bool = _opt(False, flag="--keep-failed", action="store_true",
                             help="keep an artifact that fails validation (marked failed)")
    require_validation: bool = _opt(
        False, flag="--require-validation", action="store_true",
        help="refuse to publish an artifact this machine cannot run (default: publish it 'unvalidated')")
    # target-specific builder options (formats.BUILDER_OPTIONS / Format.options): flat recipe keys and flags
    options: dict = _opt(recipe=False, factory=dict)
    log: Callable[[str], None] = _opt(print, recipe=False)

    # ------------------------------------------------------------------ schema
    @staticmethod
    def recipe_fields() -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(ExportRequest) if f.metadata.get("recipe"))

    @staticmethod
    def recipe_keys() -> frozenset[str]:
        """Every key a recipe may have: recipe fields, builder options of any target, description, notes."""
        options = {o for fmt in FORMATS.values() for o in fmt.options}
        return frozenset({*ExportRequest.recipe_fields(), *options, *RECIPE_INFO_KEYS})

    # ------------------------------------------------------------------ building one
    def apply(self, settings: dict) -> ExportRequest:
        """A copy with ``settings`` (recipe keys / flag dests → values) applied; builder options go
        into ``options``, text values are parsed (``batch``, ``int8_op_types``, the sizes)."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes: dict = {}
        options = dict(self.options)
        for key, value in settings.items():
            if key in RECIPE_INFO_KEYS or key == "name":
                continue
            if key in fields:
                parse = fields[key].metadata.get("parse")
                changes[key] = parse(value) if parse is not None and value is not None else value
            elif key in BUILDER_OPTIONS:
                options[key] = value
            else:
                raise UserError(f"unknown export setting {key!r}")
        return dataclasses.replace(self, **changes, options={k: v for k, v in options.items() if v is not None})

    @classmethod
    def from_recipe(cls, recipe: dict | None, **settings) -> ExportRequest:
        """The request of a recipe dict (from :func:`farl_edge.export.cli.load_recipe`), then ``settings``."""
        return cls(model=settings.pop("model", None), recipe=recipe or None).apply(recipe or {}).apply(settings)

    # ------------------------------------------------------------------ command line
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The request's flags, then one group per set of targets sharing builder options."""
        for f in dataclasses.fields(cls):
            flag = f.metadata.get("flag")
            if flag is None:
                continue
            kw = dict(f.metadata["argparse"])
            if f.metadata.get("help"):
                kw["help"] = f.metadata["help"]
            kw["dest"] = f.name
            if kw.get("action") is None and "choices" not in kw:
                kw["metavar"] = flag[2:].replace("-", "_").upper()  # as argparse names it (--int8-ops INT8_OPS)
            parser.add_argument(flag, **kw)
        for title, names in option_groups().items():
            g = parser.add_argument_group(title)
            for name in names:
                opt = BUILDER_OPTIONS[name]
                kw = {"type": opt.type, "choices": opt.choices, "help": opt.help, "metavar": opt.metavar}
                g.add_argument(opt.flag, dest=name, **{k: v for k, v in kw.items() if v is not None})

    @classmethod
    def flag_settings(cls, args: argparse.Namespace) -> dict:
        """What the command line set explicitly: {field or builder option: value}. The flags' absence
        leaves a recipe's value (store_true flags only ever switch on)."""
        out: dict = {}
        for f in dataclasses.fields(cls):
            flag = f.metadata.get("flag")
            if flag is None or f.name in ("model", "recipe"):
                continue
            action = f.metadata["argparse"].get("action")
            value = getattr(args, f.name, None)
            if action == "store_true":
                if value:
                    out[f.name] = True
            elif action == "store_false":
                if value is False:
                    out[f.name] = False
            elif value is not None:
                out[f.name] = value
        for name in BUILDER_OPTIONS:
            value = getattr(args, name, None)
            if value is not None:
                out[name] = value
        return out


RECIPE_KEYS = ExportRequest.recipe_keys()
