"""FaRL's fine-tuning augmentations (numpy/OpenCV): random similarity, gray, gamma, blur, occlusion."""
from __future__ import annotations

import cv2
import numpy as np


def random_similarity(rng: np.random.Generator, size: int, rotate_deg: float, scale: tuple[float, float],
                      shift: float) -> np.ndarray:
    """3×3 similarity about the crop centre, composed after the crop matrix."""
    angle = np.deg2rad(rng.uniform(-rotate_deg, rotate_deg))
    s = rng.uniform(*scale)
    tx, ty = rng.uniform(-shift, shift, size=2) * size
    c = size / 2
    cos, sin = s * np.cos(angle), s * np.sin(angle)
    return np.array([[cos, -sin, c - cos * c + sin * c + tx], [sin, cos, c - sin * c - cos * c + ty], [0, 0, 1]])


def photometric(rng: np.random.Generator, image: np.ndarray, cfg: dict) -> np.ndarray:
    """uint8 RGB → uint8 RGB with FaRL-style colour and quality changes."""
    img = image
    if rng.random() < cfg.get("gray", 0.0):
        g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        img = np.repeat(g[..., None], 3, axis=2)
    if rng.random() < cfg.get("gamma", 0.0):
        gamma = np.exp(rng.uniform(-0.4, 0.4))
        lut = np.clip(((np.arange(256) / 255.0) ** gamma) * 255 + 0.5, 0, 255).astype(np.uint8)
        img = cv2.LUT(img, lut)
    if rng.random() < cfg.get("blur", 0.0):
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.0))
    return img


def random_occlusion(rng: np.random.Generator, image: np.ndarray, prob: float) -> np.ndarray:
    """A random-coloured rectangle over part of the face (alignment must guess through it)."""
    if rng.random() >= prob:
        return image
    h, w = image.shape[:2]
    oh, ow = int(h * rng.uniform(0.1, 0.4)), int(w * rng.uniform(0.1, 0.4))
    y, x = rng.integers(0, h - oh), rng.integers(0, w - ow)
    out = image.copy()
    colour = rng.integers(0, 256, size=3, dtype=np.uint8)
    out[y:y + oh, x:x + ow] = colour if out.dtype == np.uint8 else colour / np.float32(255)  # float: farl protocol
    return out
