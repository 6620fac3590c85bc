"""Backend-agnostic evaluation: the same code measures PyTorch and every exported artifact.

A predictor is any callable ``(B, 3, S, S) float32 RGB in [0, 1] → {output name: array}`` with a
``config`` (ModelConfig) attribute; see ``farl_edge.models.predictor.TorchPredictor`` and the
runtime sessions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import numpy as np

from farl_edge import crops
from farl_edge.datasets.base import FaceSample
from farl_edge.errors import UserError
from farl_edge.metrics import AlignmentMeter, ConfusionHistogram
from farl_edge.registry import ModelConfig

# CED threshold per landmark convention: 300-W at 0.08 (AUC@0.08, as FaRL reports it), WFLW 0.1, AFLW-19 0.07.
AUC_THRESHOLDS = {"300w": 0.08, "wflw": 0.10, "aflw19": 0.07}


class Predictor(Protocol):
    config: ModelConfig

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclass
class Prediction:
    sample: FaceSample
    landmarks: np.ndarray | None = None  # (K, 2) original-image coordinates
    label_map: np.ndarray | None = None  # (H, W) uint8 in the model's label order
    raw: dict | None = None  # the model's own outputs for this face


def prepare(sample: FaceSample, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Warped input (uint8, or float32 under the farl protocol), crop matrix and original (H, W) for one
    annotated face."""
    image = sample.load_image()
    matrix = crops.crop_matrix(cfg.preprocess, cfg.crop_size, landmarks=sample.landmarks, box=sample.box,
                               image_hw=image.shape[:2])
    return crops.warp_input(image, matrix, cfg.crop_size, cfg.preprocess), matrix, image.shape[:2]


def predict_samples(predictor: Predictor, samples: Sequence[FaceSample], batch_size: int = 8,
                    keep_raw: bool = False, progress: bool = True) -> Iterator[Prediction]:
    cfg = predictor.config
    from tqdm.auto import tqdm

    bar = tqdm(total=len(samples), desc=f"eval {cfg.name}", unit="face", disable=not progress)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        prepared = [prepare(s, cfg) for s in chunk]
        outputs = predictor(crops.to_tensor_layout(np.stack([p[0] for p in prepared])))
        for i, (sample, (_, matrix, hw)) in enumerate(zip(chunk, prepared)):
            raw = {k: v[i] for k, v in outputs.items()}
            pred = Prediction(sample, raw=raw if keep_raw else None)
            if cfg.task == "alignment":
                pred.landmarks = crops.landmarks_to_image(raw["landmarks"], matrix, cfg.crop_size, cfg.preprocess)
            elif cfg.task == "parsing":
                pred.label_map = crops.logits_to_label_map(raw["logits"], matrix, cfg.crop_size, cfg.preprocess, hw)
            yield pred
        bar.update(len(chunk))
    bar.close()


def _check_task_matches_data(cfg: ModelConfig, sample: FaceSample) -> None:
    """Before any prediction: an alignment model needs landmarks, a parsing model needs masks."""
    has_landmarks = sample.landmarks is not None
    has_mask = sample.mask_path is not None or sample.mask_parts is not None
    if cfg.task == "alignment" and not has_landmarks:
        raise UserError(f"model {cfg.name!r} is an alignment model, but the data has no landmarks"
                        f"{' (it is a parsing data set: it has masks)' if has_mask else ''}; "
                        f"evaluate it on landmark data (300w, wflw, aflw19)")
    if cfg.task == "parsing" and not has_mask:
        raise UserError(f"model {cfg.name!r} is a parsing model, but the data has no masks"
                        f"{' (it is a landmark data set)' if has_landmarks else ''}; "
                        f"evaluate it on parsing data (lapa, celebamask-hq)")


def evaluate(predictor: Predictor, samples: Sequence[FaceSample], batch_size: int = 8, limit: int | None = None,
             progress: bool = True) -> dict:
    """Task metrics over ``samples`` (percent values, FaRL's definitions)."""
    cfg = predictor.config
    samples = list(samples)[:limit] if limit else list(samples)
    if not samples:
        raise UserError("no samples to evaluate")
    _check_task_matches_data(cfg, samples[0])
    if cfg.task == "alignment":
        convention = cfg.dataset if cfg.dataset in AUC_THRESHOLDS else "300w"
        meter = AlignmentMeter(convention, AUC_THRESHOLDS[convention])
        for p in predict_samples(predictor, samples, batch_size, progress=progress):
            if p.sample.landmarks is None:
                raise UserError(f"{p.sample.image_path}: no landmarks to evaluate against")
            meter.update(p.landmarks, p.sample.landmarks, box=p.sample.box)
        return meter.summary()
    if cfg.task == "parsing":
        hist = ConfusionHistogram(len(cfg.labels))
        for p in predict_samples(predictor, samples, batch_size, progress=progress):
            # Masks can be stored smaller than the image (official CelebAMask-HQ: 512 vs 1024).
            hist.update(p.label_map, p.sample.load_mask(size=p.label_map.shape))
        return hist.summary(cfg.labels)
    raise UserError(f"model {cfg.name!r} is a {cfg.task} model: nothing to evaluate on faces")
