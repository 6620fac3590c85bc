"""Core ML backend (macOS only): runs a ``model.mlpackage`` with coremltools' Core ML bindings.

The package's input is an ``ImageType`` (RGB, scale 1/255): each float crop in [0, 1] becomes an
8-bit RGB image (exact for crops that came from 8-bit images, as farl-edge's do), predicted one
at a time; outputs are stacked into the batch. Elsewhere :func:`available` says why it cannot run.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import warnings
from pathlib import Path

import numpy as np

from farl_edge.errors import UserError
from farl_edge.runtime import ArtifactError

NAME = "coreml"
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")


def available() -> tuple[bool, str]:
    if sys.platform != "darwin":
        return False, "Core ML runs only on macOS"
    if importlib.util.find_spec("coremltools") is None:
        return False, "coremltools is not installed (pip install coremltools)"
    try:
        import coremltools.libcoremlpython  # noqa: F401
    except ImportError as e:
        return False, f"coremltools has no Core ML runtime here ({e})"
    return True, ""


def package_path(model_path: str | Path) -> Path:
    """The ``.mlpackage`` folder from the manifest's model file (``model.mlpackage/Manifest.json``)."""
    path = Path(model_path)
    return path.parent if path.name == "Manifest.json" else path


def check_package(path: Path) -> None:
    if not path.is_dir():
        raise ArtifactError(f"Core ML package {path} does not exist (an .mlpackage is a folder)")
    for need in ("Manifest.json", "Data/com.apple.CoreML/model.mlmodel"):
        if not (path / need).is_file():
            raise ArtifactError(f"corrupt Core ML package {path}: {need} is missing")


class CoreMLRunner:
    def __init__(self, model_path: Path, compute_units: str = "ALL", **unused):
        if unused:
            raise UserError(f"unknown coreml options {sorted(unused)}; known: compute_units")
        if compute_units not in COMPUTE_UNITS:
            raise UserError(f"compute_units must be one of {', '.join(COMPUTE_UNITS)}, not {compute_units!r}")
        path = package_path(model_path)
        check_package(path)
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            import coremltools as ct

        try:
            self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        except Exception as e:  # noqa: BLE001 - Core ML reports damage in many ways
            raise ArtifactError(f"Core ML could not load {path}: {type(e).__name__}: {str(e)[:200]}") from None
        spec = self.model.get_spec()
        self.input_name = spec.description.input[0].name
        self.output_names = [o.name for o in spec.description.output]
        self.info = {"backend": NAME, "version": ct.__version__, "compute_units": compute_units,
                     "specification_version": spec.specificationVersion}

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        from PIL import Image

        outs: dict[str, list] = {n: [] for n in self.output_names}
        for x in np.asarray(batch):
            image = Image.fromarray(np.clip(np.rint(x.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8))
            pred = self.model.predict({self.input_name: image})
            for n in self.output_names:
                outs[n].append(np.asarray(pred[n], dtype=np.float32)[0])
        return {n: np.stack(v) for n, v in outs.items()}


def open(model_path: Path, manifest: dict, **options) -> CoreMLRunner:  # noqa: A001 - backend protocol
    return CoreMLRunner(Path(model_path), **options)
