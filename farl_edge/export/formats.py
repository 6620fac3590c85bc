"""Capability table of export formats: target → precisions, builder, runtime backend, extra.

The TensorRT / Core ML exporters plug in by adding one :class:`Format` (``register_format``)
whose builder follows the contract of :func:`farl_edge.export.onnx_export.build`, plus a runtime
backend module (``farl_edge.runtime.backends.register_backend``). The ``export`` command, the
manifest and the validator need no change.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from farl_edge.errors import UserError


@dataclass(frozen=True)
class BuilderOption:
    """One target-specific builder option: a field of ``ExportRequest.options``, a recipe key and a
    ``--flag`` of ``farl-edge export`` (spelled with dashes), all from this one entry."""

    name: str
    type: Callable | None = None  # argparse type of the --flag (recipe values are taken as JSON gives them)
    choices: Any = None
    help: str | None = None
    metavar: str | None = None
    precisions: tuple[str, ...] | None = None  # the export precisions it applies to (None: all)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def applies_to(self, precision: str) -> bool:
        return not self.precisions or precision in self.precisions


@dataclass(frozen=True)
class Format:
    target: str
    precisions: tuple[str, ...]
    builder: str  # "module:function", imported only when an export runs
    backend: str  # runtime backend that runs the artifact (farl_edge.runtime.backends)
    extra: str  # pip extra that installs what the builder needs: pip install 'farl-edge[EXTRA]'
    requires: tuple[str, ...] = ()  # importable modules the builder needs
    description: str = ""
    int8_modes: tuple[str, ...] = ("static",)
    options: tuple[str, ...] = ()  # names of its builder options (BUILDER_OPTIONS): request.options, recipe keys, flags
    notes: dict = field(default_factory=dict)

    def missing(self) -> list[str]:
        """Modules the builder needs that this environment lacks."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def available(self) -> bool:
        return not self.missing()

    def load_builder(self) -> Callable:
        module, _, func = self.builder.partition(":")
        return getattr(importlib.import_module(module), func)

    def check(self, precision: str, int8_mode: str | None = None) -> None:
        """UserError when this format cannot do what was asked here."""
        if precision not in self.precisions:
            raise UserError(f"target {self.target!r} supports precisions {', '.join(self.precisions)}, "
                            f"not {precision!r}")
        if precision == "int8" and int8_mode and int8_mode not in self.int8_modes:
            raise UserError(f"target {self.target!r} supports --int8-mode {', '.join(self.int8_modes)}, "
                            f"not {int8_mode!r}")
        missing = self.missing()
        if missing:
            raise UserError(f"target {self.target!r} needs {', '.join(missing)}: "
                            f"pip install 'farl-edge[{self.extra}]'")


@dataclass
class BuildJob:
    """What a builder gets. It writes the model file(s) into ``folder`` (the staging artifact) and
    scratch files into ``workdir``; it returns a :class:`BuildResult`."""

    model: Any  # the PyTorch FaRLModel, eval mode, weights loaded, input size set
    cfg: Any  # farl_edge.registry.ModelConfig
    export_cfg: Any  # farl_edge.export.config.ExportConfig
    precision: str
    folder: Path
    workdir: Path
    calibration: Any = None  # farl_edge.export.calibration.FaceSet for int8, else None
    evaluation: Any = None  # FaceSet of annotated faces (accuracy-controlled quantisation)
    options: dict = field(default_factory=dict)  # int8_mode, int8_op_types, max_drop, inference_precision
    log: Callable[[str], None] = print


@dataclass
class BuildResult:
    model_file: str  # path of the main model file, relative to the artifact folder
    runtime_options: dict = field(default_factory=dict)  # defaults the runtime opens the artifact with
    opset: int | None = None
    info: dict = field(default_factory=dict)  # exporter details for the manifest ("build")
    tolerance: str | None = None  # tolerance set to validate with, when not the precision's own
    checks: dict = field(default_factory=dict)  # the builder's own checks (they passed; it raises otherwise)


FORMATS: dict[str, Format] = {}


# Every builder option a target may take (Format.options names these), with its --flag's type and help.
BUILDER_OPTIONS: dict[str, BuilderOption] = {o.name: o for o in (
    BuilderOption("compute_capability", help="GPU architectures to build for, e.g. sm89 or sm86,sm89 "
                                             "(tensorrt-rtx; default: the GPU here, else all supported)"),
    BuilderOption("max_batch", int, help="--batch dynamic: profile max (default 16)"),
    BuilderOption("opt_batch", int, help="--batch dynamic: profile opt (default min(8, max))"),
    BuilderOption("timing_cache", help="timing cache file to reuse and update (tensorrt)"),
    BuilderOption("builder_optimization_level", int, choices=range(0, 6), metavar="0-5"),
    BuilderOption("workspace_mb", int, help="builder workspace limit"),
    BuilderOption("coreml_weights", choices=["linear8", "palettize8", "palettize6", "palettize4"],
                  help="weight compression (int8 default linear8; also applies to fp16)"),
    BuilderOption("coreml_activations", choices=["auto", "int8", "fp16"],
                  help="int8: auto = W8A8 where Core ML runs (macOS), else W8"),
    BuilderOption("deployment_target", help="minimum deployment target, e.g. iOS17 (default iOS16, int8 iOS17)"),
    BuilderOption("nncf_preset", choices=["mixed", "performance"], precisions=("int8",),
                  help="openvino int8: NNCF preset — mixed (default: asymmetric activations) or performance "
                       "(symmetric activations; failed the task gate on farl-small-300w: check the parity report)"),
)}


def register_builder_option(option: BuilderOption) -> BuilderOption:
    BUILDER_OPTIONS[option.name] = option
    return option


def register_format(fmt: Format, replace: bool = False) -> Format:
    if fmt.target in FORMATS and not replace:
        raise ValueError(f"export target {fmt.target!r} is already registered")
    undeclared = [o for o in fmt.options if o not in BUILDER_OPTIONS]
    if undeclared:
        raise ValueError(f"export target {fmt.target!r}: options {undeclared} are not in BUILDER_OPTIONS "
                         f"(register_builder_option first)")
    FORMATS[fmt.target] = fmt
    return fmt


def get_format(target: str) -> Format:
    if target not in FORMATS:
        raise UserError(f"unknown export target {target!r}; known targets: {', '.join(FORMATS)}")
    return FORMATS[target]


register_format(Format(
    target="onnx", precisions=("fp32", "fp16", "int8"), builder="farl_edge.export.onnx_export:build",
    backend="onnxruntime", extra="export", requires=("torch", "onnx", "onnxscript", "onnxruntime"),
    description="ONNX graph optimised for ONNX Runtime (fused attention/LayerNorm/QuickGelu); "
                "fp16 keeps I/O, LayerNorm and Softmax in fp32; int8 = QDQ static or dynamic",
    int8_modes=("static", "dynamic"),
))
register_format(Format(
    target="openvino", precisions=("fp32", "fp16", "int8"), builder="farl_edge.export.openvino_export:build",
    backend="openvino", extra="export", requires=("torch", "openvino", "nncf"),
    description="OpenVINO IR (model.xml + model.bin); fp16 = fp16-compressed weights; int8 = NNCF PTQ",
    int8_modes=("static",), options=("nncf_preset",),
))
TRT_OPTIONS = ("compute_capability", "max_batch", "opt_batch", "timing_cache", "builder_optimization_level",
               "workspace_mb")
# The GPU and Apple formats: TensorRT, TensorRT for RTX, Core ML. notes: build_needs / run_needs (hardware,
# for `farl-edge formats`), build_check ("module:function" → (ok, reason): what besides the modules this
# machine lacks).
register_format(Format(
    target="tensorrt", precisions=("fp32", "fp16", "int8"), builder="farl_edge.export.tensorrt_build:build_tensorrt",
    backend="tensorrt", extra="tensorrt", requires=("torch", "onnx", "onnxruntime", "tensorrt"),
    description="TensorRT 10/11 engine (strongly typed): fp16 / int8 Q/DQ applied to the ONNX graph first "
                "(ModelOpt where installed, else ONNX Runtime tools); engine + source ONNX + build log + timing cache",
    options=TRT_OPTIONS,
    notes={"build_needs": "NVIDIA GPU", "run_needs": "NVIDIA GPU (same TensorRT version and GPU)",
           "build_check": "farl_edge.export.tensorrt_build:can_build_here"},
))
register_format(Format(
    target="tensorrt-rtx", precisions=("fp32", "fp16", "int8"),
    builder="farl_edge.export.tensorrt_build:build_tensorrt_rtx", backend="tensorrt", extra="tensorrt-rtx",
    requires=("torch", "onnx", "onnxruntime", "tensorrt_rtx_bindings"),
    description="TensorRT for RTX engine, built ahead of time for chosen compute capabilities (also on a CPU-only "
                "machine); same graph preparation as tensorrt",
    options=TRT_OPTIONS,
    notes={"build_needs": "CPU (ahead of time)", "run_needs": "NVIDIA GPU (RTX / compute capability built for)",
           "build_check": "farl_edge.export.tensorrt_build:can_build_rtx_here"},
))
register_format(Format(
    target="coreml", precisions=("fp32", "fp16", "int8"), builder="farl_edge.export.coreml_export:build",
    backend="coreml", extra="export", requires=("torch", "coremltools"),
    description="Core ML ML program (.mlpackage), image input; int8 = 8-bit weights (+ 8-bit activations, W8A8, "
                "where calibration can run); checked structurally on Linux, predicted on macOS",
    options=("coreml_weights", "coreml_activations", "deployment_target"),
    notes={"build_needs": "CPU (any OS; W8A8 calibration on macOS)", "run_needs": "macOS / iOS (Core ML)"},
))
# Android: ExecuTorch (XNNPACK) and LiteRT. Both run here too (x86 XNNPACK), so they validate here.
register_format(Format(
    target="executorch", precisions=("fp32", "int8"), builder="farl_edge.export.executorch_export:build",
    backend="executorch", extra="android", requires=("torch", "executorch", "torchao"),
    description="ExecuTorch program (.pte) lowered to XNNPACK; int8 = PT2E static, XNNPACKQuantizer "
                "(per-channel weights), calibrated on faces",
    notes={"build_needs": "CPU", "run_needs": "CPU (Android / iOS / Linux: ExecuTorch runtime, XNNPACK)"},
))
register_format(Format(
    target="litert", precisions=("fp32", "fp16", "int8"), builder="farl_edge.export.litert_export:build",
    backend="litert", extra="android", requires=("torch", "litert_torch", "ai_edge_litert", "ai_edge_quantizer"),
    description="LiteRT flatbuffer (.tflite) from litert-torch; fp16 = fp16 weights; int8 = AI Edge Quantizer on "
                "the GEMMs and convolutions: static (calibrated int8 activations) or dynamic",
    int8_modes=("static", "dynamic"),
    notes={"build_needs": "CPU", "run_needs": "CPU (Android / Linux: LiteRT interpreter, XNNPACK)"},
))

# Every builder option any target takes (recipe keys, CLI flags), derived from the formats above.
ALL_BUILDER_OPTIONS: frozenset[str] = frozenset(o for f in FORMATS.values() for o in f.options)


def option_groups() -> dict[str, tuple[str, ...]]:
    """Builder options grouped by the targets that share them, in table order:
    ``{"tensorrt / tensorrt-rtx": (...), "coreml": (...)}`` (the --help groups of ``farl-edge export``)."""
    by_options: dict[tuple[str, ...], list[str]] = {}
    for f in FORMATS.values():
        if f.options:
            by_options.setdefault(f.options, []).append(f.target)
    return {" / ".join(targets): options for options, targets in by_options.items()}
