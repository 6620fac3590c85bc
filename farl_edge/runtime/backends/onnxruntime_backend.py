"""ONNX Runtime backend, configured for latency (intra-op threads, full graph optimisation)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from farl_edge.errors import UserError

NAME = "onnxruntime"
LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL"}


def available() -> tuple[bool, str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return False, "onnxruntime is not installed (pip install onnxruntime)"
    return True, ""


class OrtRunner:
    def __init__(self, model_path: Path, threads: int | None = None, optimization_level: str = "all",
                 providers: list | None = None, inter_op_threads: int = 1, **unused):
        import onnxruntime as ort

        if unused:
            raise UserError(f"unknown onnxruntime options {sorted(unused)}; known: threads, optimization_level, "
                            f"providers, inter_op_threads")
        if optimization_level not in LEVELS:
            raise UserError(f"optimization_level must be one of {list(LEVELS)}, not {optimization_level!r}")
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[optimization_level])
        so.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        so.inter_op_num_threads = int(inter_op_threads)
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        providers = providers or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(model_path), sess_options=so, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.info = {"backend": NAME, "version": ort.__version__, "providers": self.session.get_providers(),
                     "threads": so.intra_op_num_threads, "optimization_level": optimization_level}

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_name: batch})
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(self.output_names, outs)}


def open(model_path: Path, manifest: dict, **options) -> OrtRunner:  # noqa: A001 - backend protocol
    return OrtRunner(Path(model_path), **options)
