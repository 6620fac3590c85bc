"""Runtime backend registry: name → module. Modules are imported only when used.

A backend module defines ``NAME``, ``available() -> (bool, reason)`` and
``open(model_path, manifest, **options) -> runner`` where ``runner.run(batch) -> {name: array}``
(and ``runner.info``, a dict describing how it was configured). Another backend is one more line
in ``BACKENDS``, or a :func:`register_backend` call from outside the package.
"""
from __future__ import annotations

import importlib
from types import ModuleType

BACKENDS: dict[str, str] = {
    "onnxruntime": "farl_edge.runtime.backends.onnxruntime_backend",
    "openvino": "farl_edge.runtime.backends.openvino_backend",
    "tensorrt": "farl_edge.runtime.backends.tensorrt_backend",
    "coreml": "farl_edge.runtime.backends.coreml_backend",
    "executorch": "farl_edge.runtime.backends.executorch_backend",
    "litert": "farl_edge.runtime.backends.litert_backend",
}


def register_backend(name: str, module: str) -> None:
    BACKENDS[name] = module


def get_backend(name: str) -> ModuleType:
    from farl_edge.runtime import ArtifactError

    if name not in BACKENDS:
        raise ArtifactError(f"unknown runtime backend {name!r}; known: {', '.join(BACKENDS)}")
    module = importlib.import_module(BACKENDS[name])
    ok, reason = module.available()
    if not ok:
        raise ArtifactError(f"runtime backend {name!r} is not available here: {reason}")
    return module


def backend_available(name: str) -> tuple[bool, str]:
    """(can this machine run backend ``name``, why not)."""
    if name not in BACKENDS:
        return False, f"unknown runtime backend {name!r}"
    try:
        return importlib.import_module(BACKENDS[name]).available()
    except ImportError as e:
        return False, str(e)


def available_backends() -> dict[str, tuple[bool, str]]:
    """{name: (available, reason)} for every registered backend."""
    return {name: backend_available(name) for name in BACKENDS}
