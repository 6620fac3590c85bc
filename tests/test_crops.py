"""One pre/post path: training targets, evaluation, export validation and the runtime all go through
``crops`` with the model's typed ``preprocess`` (a plain dict is read through it)."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from farl_edge import crops, geometry
from farl_edge.registry import PreprocessCfg, get_config

BOX = np.array([60.0, 50.0, 170.0, 180.0])
FIVE = np.array([[90.0, 95.0], [140.0, 95.0], [115.0, 125.0], [95.0, 150.0], [135.0, 150.0]])


def _face(seed=0, hw=(240, 220)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    mask = rng.integers(0, 11, size=hw, dtype=np.uint8)
    pts = np.column_stack([rng.uniform(70, 160, 68), rng.uniform(60, 170, 68)])
    return image, mask, pts


@pytest.mark.parametrize("pre", [{"warp": "box", "box_scale": 1.25}, {"warp": "tanh", "warp_factor": 0.8},
                                 {"warp": "tanh", "warp_factor": 0.5}, {"warp": "similarity"}])
def test_dicts_and_typed_sections_give_the_same_crops(pre):
    image, _, pts = _face()
    typed = PreprocessCfg(pre)
    kw = {"box": BOX} if pre["warp"] == "box" else {"five_points": FIVE}
    m = crops.crop_matrix(pre, 224, **kw)
    np.testing.assert_array_equal(m, crops.crop_matrix(typed, 224, **kw))
    np.testing.assert_array_equal(crops.warp_input(image, m, 224, pre), crops.warp_input(image, m, 224, typed))
    np.testing.assert_array_equal(crops.landmarks_to_image(pts, m, 224, pre),
                                  crops.landmarks_to_image(pts, m, 224, typed))


def test_a_misspelt_preprocess_key_is_an_error():
    with pytest.raises(ValueError, match="unknown keys.*warpfactor"):
        crops.warp_input(np.zeros((8, 8, 3), np.uint8), np.eye(2, 3), 8, {"warp": "tanh", "warpfactor": 0.5})


@pytest.mark.parametrize("pre", [{"warp": "box", "box_scale": 1.25}, {"warp": "tanh", "warp_factor": 0.8},
                                 {"warp": "similarity"}])
def test_targets_in_and_predictions_out_are_inverse(pre):
    _, _, pts = _face()
    m = crops.crop_matrix(pre, 224, box=BOX) if pre["warp"] == "box" else crops.crop_matrix(pre, 224, five_points=FIVE)
    inside = crops.landmarks_to_input(pts, m, 224, pre)
    np.testing.assert_allclose(crops.landmarks_to_image(inside, m, 224, pre), pts, atol=1e-3)


def _old_targets(cfg, sample, matrix, size):
    """FaceTaskDataset's targets as it computed them before going through crops."""
    pre = dict(cfg.preprocess)
    if cfg.task == "alignment":
        if pre.get("warp") == "tanh":
            return geometry.tanh_warp_points(sample.landmarks, matrix, size, pre.get("warp_factor", 0.8))
        return geometry.transform_points(sample.landmarks, matrix)
    if pre.get("warp") == "tanh":
        return geometry.tanh_warp_image(sample.load_mask(), matrix, size, pre.get("warp_factor", 0.8),
                                        interpolation=cv2.INTER_NEAREST)
    return geometry.warp_image(sample.load_mask(), matrix, size, interpolation=cv2.INTER_NEAREST)


@pytest.mark.parametrize("name,warp", [("farl-small-300w", None), ("farl-small-300w", "tanh"),
                                       ("farl-small-celebm", None), ("farl-small-celebm", "tanh")])
@pytest.mark.parametrize("aug", [None, {"rotate": 15, "scale": [0.9, 1.1], "shift": 0.05}])
def test_training_targets_unchanged(name, warp, aug):
    from farl_edge.train.task_data import FaceTaskDataset

    cfg = get_config(name)
    if warp:
        cfg = dataclasses.replace(cfg, preprocess={"warp": warp})
    image, mask, pts = _face(1)
    sample = SimpleNamespace(load_image=lambda: image, load_mask=lambda: mask, landmarks=pts, box=BOX)
    ds = FaceTaskDataset([sample], cfg, aug, seed=3)
    x, target = ds[0]
    # The dataset's matrix, recomputed with the same random draw.
    rng = np.random.default_rng((3, 0, 0))
    matrix = crops.crop_matrix(cfg.preprocess, cfg.input_size, landmarks=pts, box=BOX, image_hw=image.shape[:2])
    if aug:
        from farl_edge.train import augment

        matrix = geometry.compose_affine(augment.random_similarity(rng, cfg.input_size, aug.get("rotate", 0),
                                                                   tuple(aug.get("scale", (1, 1))),
                                                                   aug.get("shift", 0)), matrix)
    want = _old_targets(cfg, sample, matrix, cfg.input_size)
    if cfg.task == "alignment":
        np.testing.assert_array_equal(target.numpy(), np.asarray(want, np.float32))
    else:
        np.testing.assert_array_equal(target.numpy(), want.astype(np.int64))
