"""Run exported artifacts: ``load(folder) -> Session``. Torch-free (numpy + the backend library).

An artifact folder holds the model file(s) and ``manifest.json`` (written by ``farl-edge
export``). ``load`` checks the manifest, verifies the sha256 of every file it lists, and opens the
manifest's backend from :mod:`farl_edge.runtime.backends`. A :class:`Session` is an evaluation
predictor: ``session(batch)`` maps (B, 3, S, S) float32 RGB in [0, 1] to ``{output name: array}``
and ``session.config`` is the model's :class:`~farl_edge.registry.ModelConfig`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from farl_edge.errors import FarlEdgeError, UserError
from farl_edge.registry import ModelConfig
from farl_edge.utils import run_fixed_batch

MANIFEST_NAME = "manifest.json"
ARTIFACT_FORMAT = "farl-edge-artifact"
FORMAT_VERSION = 1

__all__ = ["ArtifactError", "Session", "load", "read_manifest", "verify_files", "sha256_file", "MANIFEST_NAME"]


class ArtifactError(FarlEdgeError, ValueError):
    """The folder is not a usable artifact (missing, corrupt, failed validation, unsupported)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not an artifact folder (no such folder)")
    if not path.is_file():
        raise ArtifactError(f"{folder} is not an artifact folder: no {MANIFEST_NAME}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"corrupt artifact {folder}: {MANIFEST_NAME} is not valid JSON ({e})") from None
    if manifest.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{path} is not a farl-edge artifact manifest")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ArtifactError(f"{folder}: manifest format {manifest.get('format_version')} is newer than this "
                            f"farl-edge reads ({FORMAT_VERSION}); upgrade farl-edge")
    for key in ("model", "backend", "model_file", "files", "inputs", "outputs"):
        if key not in manifest:
            raise ArtifactError(f"corrupt artifact {folder}: manifest has no {key!r}")
    return manifest


def verify_files(folder: str | Path, manifest: dict) -> None:
    """ArtifactError naming every file that is missing or whose sha256 differs from the manifest."""
    folder = Path(folder)
    problems = []
    for name, entry in sorted(manifest["files"].items()):
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            problems.append(f"{name}: path outside the artifact")
        elif not path.is_file():
            problems.append(f"{name}: missing")
        elif (digest := sha256_file(path)) != entry["sha256"]:
            problems.append(f"{name}: sha256 {digest[:12]}… != manifest {entry['sha256'][:12]}…")
    if manifest["model_file"] not in manifest["files"]:
        problems.append(f"{manifest['model_file']}: model file not listed in the manifest")
    if problems:
        raise ArtifactError(f"corrupt artifact {folder}: " + "; ".join(problems))


def check_unit_batch(batch: np.ndarray) -> np.ndarray:
    """float32 copy/view of a float batch in [0, 1]; ValueError naming the problem otherwise.

    A uint8 batch (0..255) or a float batch in 0..255 would run without error and give wrong
    answers (landmarks tens of pixels off), so neither is converted silently.
    """
    if batch.dtype.kind != "f":
        hint = " (uint8 images: batch.astype(np.float32) / 255)" if batch.dtype.kind in "iub" else ""
        raise UserError(f"expected a float32 batch in [0, 1], got dtype {batch.dtype}{hint}")
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if batch.size == 0:
        raise UserError("empty batch: pass at least one image")
    lo, hi = float(batch.min()), float(batch.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise UserError("batch holds NaN or infinite values; expected float32 RGB in [0, 1]")
    if lo < -1e-3 or hi > 1 + 1e-3:
        hint = " (looks like 0..255: divide by 255)" if hi > 2 else ""
        raise UserError(f"expected float32 RGB in [0, 1], got values in [{lo:.3g}, {hi:.3g}]{hint}")
    return batch


class Session:
    """An opened artifact: a predictor for :func:`farl_edge.evaluate.evaluate` and the runtime."""

    def __init__(self, path: Path, manifest: dict, runner: Any, backend: str, options: dict):
        self.path = path
        self.manifest = manifest
        self.config = ModelConfig.from_dict(manifest["model"])
        self.backend = backend
        self.options = options
        self._runner = runner
        self.info = dict(getattr(runner, "info", {}) or {})  # what the backend opened (providers, device, ...)
        self.input_names = [i["name"] for i in manifest["inputs"]]
        self.output_names = [o["name"] for o in manifest["outputs"]]
        shape = manifest["inputs"][0]["shape"]
        self.batch = shape[0] if isinstance(shape[0], int) else None  # None: any batch
        self.input_size = int(manifest["input_size"])

    @property
    def input_name(self) -> str:
        return self.input_names[0]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def validated(self) -> bool:
        """True when the export's parity validation ran and passed (status ``ok``)."""
        return self.manifest.get("status") == "ok"

    def __repr__(self) -> str:
        return (f"Session({self.config.name}, {self.manifest['target']} {self.precision}, backend={self.backend}, "
                f"options={self.options})")

    def _check(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        s = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, s, s):
            raise UserError(f"{self.config.name} takes (B, 3, {s}, {s}) RGB in [0, 1], got {batch.shape}")
        return check_unit_batch(batch)

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = self._check(batch)
        n = batch.shape[0]
        if self.batch is None or n == self.batch:
            return self._runner.run(batch)
        # Fixed-batch artifact: run in chunks of its batch, padding the last one.
        return run_fixed_batch(self._runner.run, batch, self.batch)


def load(artifact_dir: str | Path, *, backend: str | None = None, verify: bool = True, allow_failed: bool = False,
         **options) -> Session:
    """Open an exported artifact.

    ``verify``: check every file's sha256 against the manifest (ArtifactError on mismatch).
    ``allow_failed``: open an artifact whose validation failed (kept with ``--keep-failed``).
    Artifacts with status ``unvalidated`` (exported where their runtime cannot run) open; check
    ``session.validated`` or run ``farl-edge validate`` first.
    ``options``: backend options over the manifest's ``runtime.options`` (e.g. ``threads=2``,
    ``inference_precision="f32"`` for OpenVINO, ``optimization_level="all"`` for ONNX Runtime).
    """
    from farl_edge.runtime import backends

    path = Path(artifact_dir)
    manifest = read_manifest(path)
    status = manifest.get("status")
    # "unvalidated": built and structurally checked where its runtime could not run (see
    # farl_edge.export.pipeline); it opens, and `farl-edge validate` completes it here.
    if status not in ("ok", "unvalidated") and not allow_failed:
        why = manifest.get("failure", "")
        raise ArtifactError(f"artifact {path} is marked {status!r}{': ' + why if why else ''}; re-export it, or "
                            f"check it with `farl-edge validate {path}` (Python: load(..., allow_failed=True))")
    if status == "unvalidated":
        import warnings

        warnings.warn(f"{path} was exported where its runtime could not run: it has not been compared with PyTorch "
                      f"yet ({manifest.get('validation', {}).get('reason', '')}); run `farl-edge validate {path} "
                      f"--update` on this machine", stacklevel=2)
    if verify:
        verify_files(path, manifest)
    name = backend or manifest["backend"]
    merged = {**manifest.get("runtime", {}).get("options", {}), **{k: v for k, v in options.items() if v is not None}}
    module = backends.get_backend(name)
    runner = module.open(path / manifest["model_file"], manifest, **merged)
    return Session(path, manifest, runner, name, merged)
