"""Calibration and evaluation face crops, prepared exactly as at inference.

Every crop goes through :func:`farl_edge.evaluate.prepare` (``crops.crop_matrix`` +
``crops.warp_input``) and :func:`farl_edge.crops.to_tensor_layout`, the path evaluation and the
runtime use. Sources:

- default: a face data root (``$FARL_EDGE_DATA``, else ``../shared/data`` beside a source
  checkout): 300-W train for alignment and backbone models, CelebAMask-HQ train for parsing;
  evaluation subsets from 300-W test-helen / CelebAMask-HQ val;
- ``--calib DIR``: an annotated data set (format detected) — or a plain folder of face images
  without annotations, each cropped as the whole image resized to the model input.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from farl_edge.errors import UserError
from farl_edge.registry import ModelConfig
from farl_edge.utils import IMAGE_SUFFIXES

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # beside a source checkout
DATA_ENV = "FARL_EDGE_DATA"
DEFAULT_CALIB = {"alignment": ("300w", "train"), "parsing": ("celebamask-hq", "train"), "backbone": ("300w", "train")}
DEFAULT_EVAL = {"alignment": ("300w", "test-helen"), "parsing": ("celebamask-hq", "val")}


@dataclass
class FaceSet:
    """Real face samples for calibration or evaluation, with a reproducible description."""

    samples: list
    source: str
    kind: str  # "annotated:<format>" or "images"
    total: int  # faces in the source before subsampling
    files: list[str] = field(default_factory=list)  # paths relative to source, in use order

    def __len__(self) -> int:
        return len(self.samples)

    def inputs(self, cfg: ModelConfig) -> np.ndarray:
        """(N, 3, S, S) float32 model inputs, prepared as at inference."""
        from farl_edge import crops
        from farl_edge.evaluate import prepare

        return crops.to_tensor_layout(np.stack([prepare(s, cfg)[0] for s in self.samples]))

    def batches(self, cfg: ModelConfig, batch: int = 1):
        """Model inputs in batches of ``batch`` (the artifact's fixed batch), prepared lazily."""
        from farl_edge import crops
        from farl_edge.evaluate import prepare

        for start in range(0, len(self.samples) - batch + 1, batch):
            chunk = self.samples[start:start + batch]
            yield crops.to_tensor_layout(np.stack([prepare(s, cfg)[0] for s in chunk]))

    def describe(self) -> dict:
        """Manifest entry: where the faces came from and a sha256 over (file name, content hash)."""
        h = hashlib.sha256()
        root = Path(self.source)
        for rel in self.files:
            path = root / rel
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
            h.update(f"{rel}\t{digest}\n".encode())
        return {"source": self.source, "kind": self.kind, "count": len(self.samples), "available": self.total,
                "selection": "evenly spaced over the sorted list", "sha256": h.hexdigest(),
                "files": self.files if len(self.files) <= 256 else self.files[:256] + ["..."]}


def data_root() -> Path:
    """``$FARL_EDGE_DATA`` when set (it must exist), else ``../shared/data`` beside the checkout."""
    env = os.environ.get(DATA_ENV)
    if env:
        if not Path(env).is_dir():
            raise UserError(f"{DATA_ENV}={env} is not a folder")
        return Path(env)
    return SHARED_DATA


def _default_hint(table: dict, task: str) -> str:
    rel = "/".join(table.get(task, ("?",)))
    return (f"set {DATA_ENV} to a folder holding {rel} (the layout of the project's shared data; "
            f"looked in {data_root() / rel})")


def shared_data_dir(task: str, which: str) -> Path | None:
    table = DEFAULT_CALIB if which == "calib" else DEFAULT_EVAL
    if task not in table:
        return None
    path = data_root().joinpath(*table[task])
    return path if path.is_dir() else None


def _evenly(items: Sequence, count: int | None) -> list:
    if count is None or count >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in idx]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def open_faces(path: str | Path, count: int | None, *, purpose: str = "calibration",
               allow_unannotated: bool = True) -> FaceSet:
    """``count`` faces (all if None) from an annotated data set, or from a plain image folder."""
    from farl_edge.datasets import DatasetError, FaceSample, detect_format, open_dataset

    path = Path(path)
    if not path.exists():
        raise UserError(f"{purpose} folder {path} does not exist")
    if not path.is_dir():
        raise UserError(f"{purpose} data {path} is not a folder")
    if count is not None and count < 1:
        raise UserError(f"{purpose} size must be >= 1, not {count}")
    try:
        fmt = detect_format(path)
    except DatasetError:
        fmt = None
    if fmt is not None:
        samples = list(open_dataset(path, fmt))
        if not samples:
            raise UserError(f"{purpose} data set {path} ({fmt}) holds no faces")
        chosen = _evenly(sorted(samples, key=lambda s: str(s.image_path)), count)
        files = [Path(s.image_path).relative_to(path).as_posix() if Path(s.image_path).is_relative_to(path)
                 else str(s.image_path) for s in chosen]
        return FaceSet(chosen, str(path), f"annotated:{fmt}", len(samples), files)
    if not allow_unannotated:
        raise UserError(f"{purpose} folder {path} is not an annotated data set (300w / wflw / aflw19 / lapa / "
                        f"celebamask-hq layout)")
    images = _image_files(path)
    if not images:
        raise UserError(f"{purpose} folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    chosen = _evenly(images, count)
    samples = [FaceSample(image_path=p, name=p.stem) for p in chosen]
    return FaceSet(samples, str(path), "images", len(images), [p.relative_to(path).as_posix() for p in chosen])


def calibration_set(cfg: ModelConfig, calib: str | Path | None, count: int) -> FaceSet:
    path = Path(calib) if calib else shared_data_dir(cfg.task, "calib")
    if path is None:
        raise UserError(f"no calibration faces found: pass --calib DIR (face images or an annotated data set), "
                        f"or {_default_hint(DEFAULT_CALIB, cfg.task)}")
    return open_faces(path, count, purpose="calibration")


def evaluation_set(cfg: ModelConfig, data: str | Path | None, count: int) -> FaceSet:
    """Annotated faces for validation (the task-level checks need ground truth)."""
    path = Path(data) if data else shared_data_dir(cfg.task, "eval")
    if path is None:
        if cfg.task == "backbone":
            path = shared_data_dir("alignment", "eval")
            if path is not None:
                return open_faces(path, count, purpose="evaluation")
        raise UserError(f"no evaluation faces found for validation: pass --eval-data DIR (an annotated data "
                        f"set), or {_default_hint(DEFAULT_EVAL, cfg.task)}")
    return open_faces(path, count, purpose="evaluation", allow_unannotated=cfg.task == "backbone")
