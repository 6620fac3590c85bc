"""LiteRT backend: runs ``model.tflite`` with the LiteRT interpreter (``ai_edge_litert``; XNNPACK
delegate on the CPU), as ``org.tensorflow.lite.Interpreter`` does on Android. No torch needed."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

from farl_edge.errors import UserError
from farl_edge.utils import package_version

NAME = "litert"
SIGNATURE = "serving_default"


def available() -> tuple[bool, str]:
    if importlib.util.find_spec("ai_edge_litert") is None:
        return False, "ai-edge-litert is not installed (pip install 'farl-edge[android]')"
    return True, ""


def _position(name: str) -> int:
    """litert-torch names outputs output_0, output_1, ... in the PyTorch model's order."""
    m = re.search(r"output_(\d+)", name)
    return int(m.group(1)) if m else 0


class LiteRTRunner:
    def __init__(self, model_path: Path, manifest: dict, threads: int | None = None, **unused):
        if unused:
            raise UserError(f"unknown litert options {sorted(unused)}; known: threads")
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(model_path), num_threads=int(threads) if threads else None)
        self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        sig = self.interpreter.get_signature_list()[SIGNATURE]
        self.input_name = sig["inputs"][0]
        names = [o["name"] for o in manifest["outputs"]]
        self.output_map = dict(zip(sorted(sig["outputs"], key=_position), names))
        self.info = {"backend": NAME, "version": package_version("ai-edge-litert", "?"), "threads": threads,
                     "delegate": "XNNPACK (CPU)"}

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.runner(**{self.input_name: np.ascontiguousarray(batch, np.float32)})
        return {self.output_map[k]: np.asarray(v, dtype=np.float32) for k, v in outs.items()}


def open(model_path: Path, manifest: dict, **options) -> LiteRTRunner:  # noqa: A001 - backend protocol
    return LiteRTRunner(Path(model_path), manifest, **options)
