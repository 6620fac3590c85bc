"""Training sets for fine-tuning: annotated faces → augmented model inputs and targets."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from farl_edge import crops, geometry
from farl_edge.datasets.base import FaceSample
from farl_edge.registry import ModelConfig
from farl_edge.train import augment


# The recipe's "augment" section (fine-tuning checks it): geometric here, photometric in augment.py.
AUGMENT_KEYS = ("rotate", "scale", "shift", "occlusion", "gray", "gamma", "blur")


class FaceTaskDataset(Dataset):
    """Yields (input float (3,S,S) in [0,1], target): landmarks (K,2) input px, or labels (S,S) long."""

    def __init__(self, samples: list[FaceSample], cfg: ModelConfig, aug: dict | None, seed: int = 0):
        self.samples, self.cfg, self.aug, self.seed = samples, cfg, aug or {}, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int):
        rng = np.random.default_rng((self.seed, self.epoch, i))
        sample, size = self.samples[i], self.cfg.crop_size
        image = sample.load_image()
        matrix = crops.crop_matrix(self.cfg.preprocess, size, landmarks=sample.landmarks, box=sample.box,
                                   image_hw=image.shape[:2])
        if self.aug:
            a = self.aug
            matrix = geometry.compose_affine(
                augment.random_similarity(rng, size, a.get("rotate", 0), tuple(a.get("scale", (1, 1))), a.get("shift", 0)),
                matrix)
            image = augment.photometric(rng, image, a)
        x = crops.warp_input(image, matrix, size, self.cfg.preprocess)
        if self.aug:
            x = augment.random_occlusion(rng, x, self.aug.get("occlusion", 0.0))
        tensor = torch.from_numpy(crops.to_tensor_layout(x[None])[0])
        if self.cfg.task == "alignment":
            pts = crops.landmarks_to_input(sample.landmarks, matrix, size, self.cfg.preprocess)
            return tensor, torch.from_numpy(np.asarray(pts, dtype=np.float32))
        labels = crops.warp_label_map(sample.load_mask(), matrix, size, self.cfg.preprocess)
        return tensor, torch.from_numpy(labels.astype(np.int64))
