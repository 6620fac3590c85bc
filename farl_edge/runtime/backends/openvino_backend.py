"""OpenVINO backend: PERFORMANCE_HINT=LATENCY and an explicit inference precision.

On CPUs with AMX / AVX512-BF16, OpenVINO runs f32 models in bf16 unless told otherwise; the
manifest records the precision the artifact was validated with (``runtime.options``), and
``load(..., inference_precision="bf16")`` overrides it.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from farl_edge.errors import UserError

NAME = "openvino"
PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}


def available() -> tuple[bool, str]:
    if importlib.util.find_spec("openvino") is None:
        return False, "openvino is not installed (pip install openvino)"
    return True, ""


def default_inference_precision(device: str = "CPU") -> str:
    """What OpenVINO runs f32 layers in on this machine when not told (bf16 on AMX CPUs)."""
    import openvino as ov

    return short_precision(ov.Core().get_property(device, "INFERENCE_PRECISION_HINT"))


def short_precision(element_type) -> str:
    """OpenVINO element type (or its text) → "f32" / "bf16" / "f16"."""
    text = str(element_type).replace("Type: ", "").strip("<>' ")
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(text, text)


class OpenVinoRunner:
    def __init__(self, model_path: Path, device: str = "CPU", threads: int | None = None,
                 inference_precision: str | None = None, performance_hint: str = "LATENCY", **unused):
        import openvino as ov

        if unused:
            raise UserError(f"unknown openvino options {sorted(unused)}; known: device, threads, "
                            f"inference_precision, performance_hint")
        config = {"PERFORMANCE_HINT": performance_hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if inference_precision and inference_precision != "default":
            if inference_precision not in PRECISIONS:
                raise UserError(f"inference_precision must be one of {sorted(PRECISIONS)} or 'default', "
                                f"not {inference_precision!r}")
            config["INFERENCE_PRECISION_HINT"] = PRECISIONS[inference_precision]
        core = ov.Core()
        self.compiled = core.compile_model(str(model_path), device, config)
        self.request = self.compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        used = short_precision(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.info = {"backend": NAME, "version": ov.__version__, "device": device, **config,
                     "inference_precision_used": used}

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        result = self.request.infer({0: batch})
        return {name: np.array(result[out], dtype=np.float32)
                for name, out in zip(self.output_names, self.compiled.outputs)}


def open(model_path: Path, manifest: dict, **options) -> OpenVinoRunner:  # noqa: A001 - backend protocol
    return OpenVinoRunner(Path(model_path), **options)
