"""ExecuTorch backend: runs ``model.pte`` through ExecuTorch's Python runtime (XNNPACK delegate).

The same program runs on Android through ``org.pytorch.executorch.Module`` (runtimes/android);
here it serves validation, evaluation and the bench. ExecuTorch's Python runtime takes torch
tensors, so this backend needs torch (the phone does not).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from farl_edge.errors import UserError
from farl_edge.utils import package_version

NAME = "executorch"


def available() -> tuple[bool, str]:
    for module in ("executorch", "torch"):
        if importlib.util.find_spec(module) is None:
            return False, f"{module} is not installed (pip install 'farl-edge[android]')"
    return True, ""


class ExecuTorchRunner:
    def __init__(self, model_path: Path, manifest: dict, threads: int | None = None, **unused):
        if unused:
            raise UserError(f"unknown executorch options {sorted(unused)}; known: threads")
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        import executorch.kernels.quantized  # noqa: F401 - registers the (de)quantise kernels int8 programs call

        if threads:
            portable_lib._unsafe_reset_threadpool(int(threads))  # noqa: SLF001 - XNNPACK's thread pool size
        self.method = Runtime.get().load_program(Path(model_path)).load_method("forward")
        self.output_names = [o["name"] for o in manifest["outputs"]]
        self.info = {"backend": NAME, "version": package_version("executorch", "?"), "delegate": "XNNPACK",
                     "threads": portable_lib._threadpool_get_thread_count()}  # noqa: SLF001

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        outs = self.method.execute([torch.from_numpy(np.ascontiguousarray(batch, np.float32))])
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(self.output_names, outs)}


def open(model_path: Path, manifest: dict, **options) -> ExecuTorchRunner:  # noqa: A001 - backend protocol
    return ExecuTorchRunner(Path(model_path), manifest, **options)
