"""Artifact folders: written under a temporary sibling name, renamed when complete.

A failed or interrupted export leaves no folder that looks finished: the staging folder is
``.<name>.partial.p<pid>-XXXX`` beside the destination and is removed on failure (SIGTERM included,
see ``farl_edge.cli``); leftovers of a killed process are swept by the next export of the same
output. Only a folder holding a ``manifest.json`` whose ``status`` is ``ok`` is a finished artifact.
``--force`` replaces a farl-edge artifact, never any other folder.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from farl_edge.errors import UserError
from farl_edge.fileio import atomic_write_json, creatable_in, pid_prefix, publish_modes, sweep_stale
from farl_edge.runtime import ARTIFACT_FORMAT, FORMAT_VERSION, MANIFEST_NAME, sha256_file
from farl_edge.utils import package_version

LIBRARIES = ("farl-edge", "torch", "onnx", "onnxscript", "onnxruntime", "openvino", "nncf", "numpy", "opencv-python",
             "opencv-python-headless", "coremltools", "tensorrt", "tensorrt-rtx-cu12-bindings", "nvidia-modelopt")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        if (version := package_version(name)) is not None:
            out[name] = version
    return out


def check_writable(dest: Path) -> None:
    """UserError (one line) when ``dest`` cannot be created; creates nothing itself."""
    probe = creatable_in(dest, f"cannot write {dest}")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".farl-edge-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(f"cannot write {dest}: {e.strerror or e}") from None
    if dest.exists() and not dest.is_dir():
        raise UserError(f"cannot write {dest}: a file of that name exists")


def is_artifact(folder: Path) -> bool:
    """True when ``folder`` holds a farl-edge manifest (what ``--force`` may replace)."""
    path = folder / MANIFEST_NAME
    if not folder.is_dir() or not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == ARTIFACT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_replaceable(dest: Path, force: bool) -> None:
    """ValueError unless ``dest`` is free, or (with ``force``) a farl-edge artifact we may replace."""
    if not (dest.exists() or dest.is_symlink()):
        return
    if dest.is_dir() and not dest.is_symlink() and not any(dest.iterdir()):
        return  # an empty folder holds nothing to lose
    if not force:
        raise UserError(f"{dest} exists; pass --force to replace it (only a farl-edge artifact is replaced)")
    if not is_artifact(dest):
        raise UserError(f"{dest} exists and is not a farl-edge artifact (no farl-edge {MANIFEST_NAME}); "
                        f"--force replaces artifacts only: choose another --output")
    resolved, cwd = dest.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UserError(f"{dest} is the current folder (or holds it); run from elsewhere or choose another --output")


@contextmanager
def staging_folder(dest: Path) -> Iterator[Path]:
    """A fresh temporary sibling of ``dest``; removed on any exit unless it was moved away."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(dest.parent, dest.name)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=pid_prefix(dest.name)))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def file_table(folder: Path) -> dict[str, dict]:
    """sha256 and size of every file in ``folder`` (recursive), except the manifest itself."""
    table = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST_NAME:
            continue
        table[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return table


def new_manifest(**fields) -> dict:
    return {"format": ARTIFACT_FORMAT, "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": library_versions(), **fields}


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Hash the folder's files into ``manifest['files']`` and write ``manifest.json`` atomically."""
    manifest["files"] = file_table(folder)
    atomic_write_json(folder / MANIFEST_NAME, manifest, default=_json_default)
    return manifest


def _json_default(value):
    import numpy as np

    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to the manifest")


def publish(staging: Path, dest: Path, overwrite: bool = False) -> Path:
    """Rename the finished staging folder to ``dest`` (replacing an old artifact if allowed).

    Files get the user's umask (the staging folder was made 0700 by ``mkdtemp``).
    """
    publish_modes(staging)
    if dest.is_dir() and not dest.is_symlink() and not any(dest.iterdir()):
        dest.rmdir()
    if dest.exists() or dest.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{dest} exists; pass --force to replace it")
        if not is_artifact(dest):
            raise FileExistsError(f"{dest} is not a farl-edge artifact; it is never replaced")
        old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=pid_prefix(dest.name, "old")))
        os.replace(dest, old / dest.name)
        os.replace(staging, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, dest)
    return dest
