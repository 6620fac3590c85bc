"""TensorRT engines: one builder for ``--target tensorrt`` (TensorRT 10/11, ``import tensorrt``) and
``--target tensorrt-rtx`` (TensorRT for RTX, ``import tensorrt_rtx_bindings``).

Path, the same for both: torch → ONNX (plain graph) → precision applied to the graph
(:mod:`farl_edge.export.tensorrt_prepare`) → parse → builder config → optimisation profile
(dynamic batch) → build → our engine container (:mod:`farl_edge.runtime.backends.tensorrt_backend`,
a JSON header with flavour, version, compute capabilities, precision, model, input size).

The few API differences live in :class:`Flavour`:

- module import;
- compute capability: TensorRT for RTX builds *ahead of time* for chosen compute capabilities
  (``config.set_compute_capability``), also on a machine without a GPU; TensorRT proper builds
  for the GPU it runs on (a GPU is needed);
- precision: both build strongly typed networks, so no FP16/INT8 builder flags are set (TensorRT
  11 and RTX have none); TF32 is switched off for fp32 so that fp32 means fp32;
- timing cache: TensorRT keeps one (saved in the artifact as ``timing.cache`` and in the user
  cache folder, reused by the next build for the same version and GPU); in TensorRT for RTX the
  timing-cache calls are no-ops (its kernels are compiled on the device at first run).

Measured here (CPU-only, TensorRT for RTX 1.7.1.116, farl-small-300w at 224): fp32 engine 24 MB
in ≈3 s; fp16 14 MB in ≈3 s; int8 Q/DQ 16 MB in ≈6 s; building for all six RTX compute
capabilities instead of one adds ≈1 MB and no time. fp32 cannot target Turing (sm75): no fp32 GEMM
there in TensorRT for RTX, so the no-GPU default leaves sm75 out for fp32.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from farl_edge.errors import UserError
from farl_edge.runtime.backends.tensorrt_backend import FLAVOURS, EngineError, cuda_devices, normalize_cc, write_engine

ENGINE_FILE = "model.engine"
ONNX_FILE = "model.onnx"
LOG_FILE = "build.log"
TIMING_CACHE_FILE = "timing.cache"
TRT_INT8_OP_TYPES = ("MatMul", "Gemm", "Conv", "ConvTranspose")
DEFAULT_MAX_BATCH = 16


class FlavourUnavailable(UserError):
    """The TensorRT flavour cannot build here (not installed, or needs a GPU); a ValueError too."""


@dataclass
class Flavour:
    """The adapter: what differs between TensorRT and TensorRT for RTX."""

    name: str  # "tensorrt" | "tensorrt-rtx"
    trt: Any  # the imported module

    @property
    def module(self) -> str:
        return FLAVOURS[self.name][0]

    @property
    def version(self) -> str:
        return str(self.trt.__version__)

    @property
    def ahead_of_time(self) -> bool:
        """Builds for chosen compute capabilities without a GPU (TensorRT for RTX)."""
        return hasattr(self.trt, "ComputeCapability") and hasattr(self.trt.IBuilderConfig, "set_compute_capability")

    @property
    def timing_cache(self) -> bool:
        return self.name == "tensorrt"

    def supported_ccs(self) -> list[str]:
        if not self.ahead_of_time:
            return []
        return [normalize_cc(n) for n in self.trt.ComputeCapability.__members__ if n.upper().startswith("SM")]

    def network_flags(self) -> int:
        flag = getattr(self.trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return 0 if flag is None else 1 << int(flag)

    def resolve_ccs(self, requested: Sequence[str] | str | None,
                    precision: str | None = None) -> tuple[list[str], list[str]]:
        """(compute capabilities to build for, GPUs seen). Raises FlavourUnavailable / UserError.

        Default without a GPU: every compute capability the library knows, except Turing (sm75)
        for fp32 — TensorRT for RTX 1.7 cannot compile fp32 GEMMs for it (measured: "FP32 GEMM is
        not supported" for SM75); name sm75 explicitly with fp16 / int8.
        """
        gpus = cuda_devices()
        here = [g["compute_capability"] for g in gpus]
        if isinstance(requested, str):
            requested = [c for c in requested.replace(" ", "").split(",") if c]
        wanted = [normalize_cc(c) for c in (requested or [])]
        if not self.ahead_of_time:
            if not gpus:
                raise FlavourUnavailable(
                    f"building {self.name} engines needs an NVIDIA GPU (TensorRT builds for the GPU it runs on); "
                    f"on a CPU-only machine use --target tensorrt-rtx, which builds ahead of time")
            other = [c for c in wanted if c not in ("current", here[0])]
            if other:
                raise UserError(f"{self.name} builds for the GPU it runs on ({here[0]}), not {', '.join(other)}; "
                                 f"build on such a GPU or use --target tensorrt-rtx")
            return [here[0]], here
        supported = self.supported_ccs()
        if not wanted:  # default: this GPU, or every compute capability the library knows
            wanted = ["current"] if gpus else [c for c in supported if not (precision == "fp32" and c == "sm75")]
        out = []
        for cc in wanted:
            if cc == "current":
                if not gpus:
                    raise UserError("--compute-capability current needs an NVIDIA GPU here; name the target GPU's "
                                     f"({', '.join(supported)})")
                cc = here[0]
            if cc not in supported:
                raise UserError(f"{self.name} {self.version} builds for compute capabilities "
                                 f"{', '.join(supported)}, not {cc}")
            if cc not in out:
                out.append(cc)
        return out, here

    def configure(self, config, precision: str, ccs: Sequence[str]) -> dict:
        """Flavour-specific builder settings; returns what was set (for the manifest)."""
        trt = self.trt
        done: dict = {"strongly_typed": bool(self.network_flags()),
                      "precision_flags": "none: strongly typed, precision comes from the ONNX graph"}
        if self.ahead_of_time:
            config.num_compute_capabilities = len(ccs)
            for i, cc in enumerate(ccs):
                config.set_compute_capability(getattr(trt.ComputeCapability, cc.upper()), i)
            done["compute_capabilities_set"] = list(ccs)
        tf32 = getattr(trt.BuilderFlag, "TF32", None)
        if tf32 is not None and precision == "fp32":
            config.clear_flag(tf32)
            done["tf32"] = False
        return done


def load_flavour(name: str) -> Flavour:
    if name not in FLAVOURS:
        raise ValueError(f"unknown TensorRT flavour {name!r}; known: {', '.join(FLAVOURS)}")
    module, hint = FLAVOURS[name]
    try:
        trt = importlib.import_module(module)
    except ImportError as e:
        raise FlavourUnavailable(f"{name} is not installed ({e}): {hint}") from None
    return Flavour(name, trt)


def _logger(trt, lines: list[str], min_severity: str = "INFO"):
    sev = trt.ILogger.Severity
    limit = int(getattr(sev, min_severity))

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            if int(severity) <= limit:
                stamp = time.strftime("%H:%M:%S")
                lines.append(f"{stamp} [{severity.name}] {msg}")

    return Logger()


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "farl-edge" / "tensorrt"


@dataclass(kw_only=True)
class EngineBuild:
    """One engine build: the single argument of :func:`build_engine`.

    The builder options are the formats table's (``Format.options`` of ``tensorrt`` /
    ``tensorrt-rtx``: ``--compute-capability``, ``--max-batch``, ``--opt-batch``, ``--timing-cache``,
    ``--builder-optimization-level``, ``--workspace-mb``), under the same names;
    :meth:`from_options` takes them from an export's ``options``.
    """

    onnx_path: Path
    engine_path: Path
    flavour: Flavour
    precision: str
    header: dict  # the engine container's header (model, task, input size, ...); build facts are added
    batch: int | None  # the ONNX graph's static batch, or None: dynamic, profile 1 / opt_batch / max_batch
    # builder options (formats.TRT_OPTIONS)
    compute_capability: Sequence[str] | str | None = None  # "sm86,sm89", a list, or None: the default
    max_batch: int = DEFAULT_MAX_BATCH
    opt_batch: int | None = None  # default min(8, max_batch)
    timing_cache: Path | None = None  # timing cache file to seed the build from and update (tensorrt)
    builder_optimization_level: int | None = None
    workspace_mb: int | None = None
    # where the build writes besides the engine
    log_path: Path | None = None
    timing_cache_copy: Path | None = None  # a copy of the updated timing cache (the artifact's)
    log_level: str = "INFO"
    log: Callable[[str], None] = print

    @classmethod
    def from_options(cls, options: dict, **fields) -> EngineBuild:
        """The build of an export's builder options (unset ones keep their defaults) plus ``fields``."""
        from farl_edge.export.formats import TRT_OPTIONS

        given = {k: v for k, v in options.items() if k in TRT_OPTIONS and v is not None}
        if "max_batch" in given:
            given["max_batch"] = int(given["max_batch"] or DEFAULT_MAX_BATCH)
        return cls(**{**given, **fields})


def build_engine(build: EngineBuild) -> dict:
    """Parse ``build.onnx_path``, build, and write our engine container. Returns the build record.

    ``build.batch``: the static batch (the ONNX graph's), or None for a dynamic batch with the profile
    min 1 / opt ``opt_batch`` (default min(8, max)) / max ``max_batch``.
    """
    b = build
    flavour, precision, onnx_path = b.flavour, b.precision, Path(b.onnx_path)
    trt = flavour.trt
    ccs, gpus = flavour.resolve_ccs(b.compute_capability, precision)
    lines: list[str] = [f"farl-edge TensorRT build: {flavour.name} {flavour.version}, precision {precision}, "
                        f"compute capabilities {', '.join(ccs)}, GPUs here: {', '.join(gpus) or 'none'}"]
    logger = _logger(trt, lines, b.log_level)
    record: dict = {"flavour": flavour.name, "version": flavour.version, "compute_capabilities": ccs,
                    "gpus_here": gpus}
    try:
        builder = trt.Builder(logger)
        network = builder.create_network(flavour.network_flags())
        parser = trt.OnnxParser(network, logger)
        t0 = time.perf_counter()
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError(f"{flavour.name} could not parse {onnx_path.name}: " + " | ".join(errors[:5]))
        record["parse_s"] = round(time.perf_counter() - t0, 3)
        record["network"] = {"layers": network.num_layers,
                             "inputs": {network.get_input(i).name: list(network.get_input(i).shape)
                                        for i in range(network.num_inputs)},
                             "outputs": {network.get_output(i).name: list(network.get_output(i).shape)
                                         for i in range(network.num_outputs)}}
        config = builder.create_builder_config()
        record["settings"] = flavour.configure(config, precision, ccs)
        if b.builder_optimization_level is not None:
            config.builder_optimization_level = int(b.builder_optimization_level)
        record["settings"]["builder_optimization_level"] = int(config.builder_optimization_level)
        if b.workspace_mb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(b.workspace_mb) << 20)
            record["settings"]["workspace_mb"] = int(b.workspace_mb)
        if hasattr(trt, "ProfilingVerbosity"):
            config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED

        # optimisation profile
        inp = network.get_input(0)
        shape = list(inp.shape)
        if shape[0] == -1:
            if b.batch is not None:
                raise ValueError("the ONNX graph has a dynamic batch but a static batch was asked")
            max_batch = int(b.max_batch)
            opt = int(b.opt_batch or min(8, max_batch))
            if not 1 <= opt <= max_batch:
                raise UserError(f"batch profile needs 1 <= opt ({opt}) <= max ({max_batch})")
            profile = builder.create_optimization_profile()
            rest = tuple(shape[1:])
            profile.set_shape(inp.name, (1, *rest), (opt, *rest), (max_batch, *rest))
            config.add_optimization_profile(profile)
            record["batch"] = {"min": 1, "opt": opt, "max": max_batch}
        else:
            record["batch"] = int(shape[0])

        # timing cache (TensorRT proper; a no-op in TensorRT for RTX)
        cache = None
        if flavour.timing_cache:
            seed = b""
            if b.timing_cache is not None and Path(b.timing_cache).is_file():
                seed = Path(b.timing_cache).read_bytes()
                record["timing_cache_reused"] = str(b.timing_cache)
            cache = config.create_timing_cache(seed)
            config.set_timing_cache(cache, False)
        else:
            record["timing_cache"] = f"not used: timing-cache calls are no-ops in {flavour.name}"

        b.log(f"{flavour.name} {flavour.version}: building {precision} engine for {', '.join(ccs)} "
              f"(batch {record['batch']})")
        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        record["build_s"] = round(time.perf_counter() - t0, 2)
        if serialized is None:
            errors = [ln for ln in lines if "[ERROR]" in ln or "[INTERNAL_ERROR]" in ln]
            raise RuntimeError(f"{flavour.name} engine build failed: " + " | ".join(errors[-5:] or lines[-3:]))
        engine = bytes(serialized)
        header = {**b.header, "flavour": flavour.name, "module": flavour.module, "version": flavour.version,
                  "compute_capabilities": ccs, "precision": precision, "batch": record["batch"],
                  "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  "built_on": {"host": platform.node(), "gpus": gpus}}
        record["header"] = write_engine(Path(b.engine_path), engine, header)
        record["engine_bytes"] = len(engine)
        if cache is not None:
            blob = bytes(config.get_timing_cache().serialize())
            for path in (b.timing_cache_copy, b.timing_cache):
                if path is not None:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                    Path(path).write_bytes(blob)
            record["timing_cache_bytes"] = len(blob)
        lines.append(f"engine: {len(engine)} bytes, built in {record['build_s']} s")
        return record
    finally:
        if b.log_path is not None:
            Path(b.log_path).write_text("\n".join(lines) + "\n")


class _OrtPredictor:
    """The prepared ONNX graph on ONNX Runtime CPU: parity of the graph TensorRT builds from."""

    def __init__(self, path: Path, cfg, output_names):
        from farl_edge.runtime.backends.onnxruntime_backend import OrtRunner

        self.runner = OrtRunner(path, optimization_level="basic")
        self.config = cfg
        self.output_names = list(output_names)

    def __call__(self, batch):
        import numpy as np

        return self.runner.run(np.ascontiguousarray(batch, np.float32))


def check_prepared_onnx(job, onnx_path: Path, precision: str, faces: int = 8) -> dict:
    """Validate the prepared graph against PyTorch on ONNX Runtime CPU (raises ParityError)."""
    from farl_edge.export import validate
    from farl_edge.export.onnx_export import onnx_check
    from farl_edge.models.predictor import TorchPredictor

    onnx_check(onnx_path)
    out = {"onnx_checker": "ok"}
    if job.evaluation is None or not len(job.evaluation):
        out["parity"] = "skipped: no evaluation faces"
        return out
    samples = job.evaluation.samples[:faces]
    tol = job.export_cfg.tolerance(precision, job.options.get("tolerance"))
    report = validate.compare(TorchPredictor(job.model), _OrtPredictor(onnx_path, job.cfg, job.export_cfg.output_names),
                              samples, tol, job.export_cfg.output_names, batch_size=job.export_cfg.batch or 4,
                              raise_on_fail=False)
    out["parity"] = {"backend": "onnxruntime (CPU)", "faces": len(samples), "passed": report.passed,
                     "checks": {c.name: c.measured for c in report.checks}}
    if not report.passed:
        raise validate.ParityError(report, what=f"prepared {precision} ONNX graph")
    return out


def _export_onnx(job, dst: Path) -> dict:
    import onnx

    from farl_edge.export import onnx_export

    raw = job.workdir / "trt-exported.onnx"
    exporter = job.options.get("exporter") or job.export_cfg.exporter
    onnx_export.torch2onnx(job.model, raw, job.export_cfg, exporter)
    model = onnx.load(str(raw))
    onnx_export.fix_batch(model, job.export_cfg.batch)
    onnx_export.save_onnx(model, dst)
    return {"exporter": exporter, **onnx_export.graph_stats(dst)}


def _build(job, flavour_name: str):
    from farl_edge.export import tensorrt_prepare, validate
    from farl_edge.export.formats import BuildResult

    flavour = load_flavour(flavour_name)
    opts = job.options
    ccs, _ = flavour.resolve_ccs(opts.get("compute_capability"), job.precision)  # fail early, before the export
    info: dict = {"flavour": flavour.name, "version": flavour.version}
    plain = job.workdir / "plain.onnx"
    job.log(f"torch → onnx (plain graph for {flavour.name})")
    info["exported"] = _export_onnx(job, plain)
    prepared = job.folder / ONNX_FILE
    batches = None
    if job.precision == "int8":
        if job.calibration is None:
            raise ValueError("int8 needs calibration faces")
        batches = list(job.calibration.batches(job.cfg, job.export_cfg.batch or 1))
        job.log(f"int8 Q/DQ graph, {len(job.calibration)} calibration faces")
    elif job.precision == "fp16":
        job.log("fp16 graph (I/O, LayerNorm, Softmax kept fp32)")
    info["prepared"] = tensorrt_prepare.prepare(
        job.precision, plain, prepared, batches=batches, input_name=job.export_cfg.input_name,
        op_types=opts.get("int8_op_types") or TRT_INT8_OP_TYPES, workdir=job.workdir)
    info["prepared"].pop("ops", None)
    if job.precision == "int8":
        info["calibration"] = job.calibration.describe()
    job.log("checking the prepared graph (onnx.checker, ONNX Runtime CPU parity)")
    info["prepared_check"] = check_prepared_onnx(job, prepared, job.precision)

    header = {"model": job.cfg.name, "task": job.cfg.task, "input_size": job.cfg.crop_size,
              "input_name": job.export_cfg.input_name, "outputs": list(job.export_cfg.output_names),
              "graph_tool": info["prepared"]["tool"]}
    cache_key = f"{flavour.name}-{flavour.version}-{'_'.join(ccs)}.timing"
    record = build_engine(EngineBuild.from_options(
        opts, onnx_path=prepared, engine_path=job.folder / ENGINE_FILE, flavour=flavour, precision=job.precision,
        header=header, batch=job.export_cfg.batch, compute_capability=ccs, log_path=job.folder / LOG_FILE,
        timing_cache_copy=job.folder / TIMING_CACHE_FILE if flavour.timing_cache else None,
        timing_cache=(Path(opts["timing_cache"]) if opts.get("timing_cache")
                      else user_cache_dir() / cache_key) if flavour.timing_cache else None,
        log=job.log))
    record.pop("header", None)
    info["engine"] = record
    expected = {job.export_cfg.input_name: job.export_cfg.input_shape(),
                **job.export_cfg.output_shapes(job.cfg.vision.get("output_dim"))}
    network = record["network"]
    engine_io = validate.check_io(f"{flavour.name} engine", expected, {**network["inputs"], **network["outputs"]})
    info["files"] = {"engine": ENGINE_FILE, "source_onnx": ONNX_FILE, "build_log": LOG_FILE,
                     **({"timing_cache": TIMING_CACHE_FILE} if flavour.timing_cache else {})}
    job.log(f"engine {record['engine_bytes'] / 1e6:.1f} MB in {record['build_s']} s")
    return BuildResult(model_file=ENGINE_FILE, opset=job.export_cfg.opset, info=info,
                       checks={"prepared_graph": info["prepared_check"], "engine_io": engine_io},
                       runtime_options={"device": 0})


def build_tensorrt(job):
    """Builder of target ``tensorrt`` (TensorRT 10/11; needs an NVIDIA GPU)."""
    return _build(job, "tensorrt")


def build_tensorrt_rtx(job):
    """Builder of target ``tensorrt-rtx`` (TensorRT for RTX; ahead of time, also without a GPU)."""
    return _build(job, "tensorrt-rtx")


def can_build_here() -> tuple[bool, str]:
    """Target ``tensorrt``: TensorRT installed and an NVIDIA GPU present."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return False, "tensorrt not installed"
    if not cuda_devices():
        return False, "needs an NVIDIA GPU"
    return True, ""


def can_build_rtx_here() -> tuple[bool, str]:
    """Target ``tensorrt-rtx``: TensorRT for RTX installed (no GPU needed)."""
    import importlib.util

    if importlib.util.find_spec("tensorrt_rtx_bindings") is None:
        return False, "tensorrt_rtx_bindings not installed"
    return True, ""


__all__ = ["Flavour", "FlavourUnavailable", "EngineError", "EngineBuild", "load_flavour", "build_engine",
           "build_tensorrt", "build_tensorrt_rtx", "check_prepared_onnx"]
