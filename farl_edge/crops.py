"""Face crops in and out of the model, shared by training, evaluation and the runtime (no torch).

Every path that feeds a model goes through ``crop_matrix`` + ``warp_input``, and every result
goes back through ``landmarks_to_image`` / ``logits_to_label_map``, so PyTorch, exported models and
the camera runtime see identical pixels; training targets go the same way in through
``landmarks_to_input`` / ``warp_label_map``. Which warp, and its settings, come from the model's
``preprocess`` (:class:`~farl_edge.registry.PreprocessCfg`, which holds the defaults; a plain dict
is read through it, so a misspelt key is an error).
"""
from __future__ import annotations

import cv2
import numpy as np

from farl_edge import geometry
from farl_edge.registry import PreprocessCfg


def _pre(preprocess) -> PreprocessCfg:
    return PreprocessCfg.coerce(preprocess) if preprocess is not None else PreprocessCfg()


def crop_matrix(preprocess: PreprocessCfg | dict, size: int, *, landmarks=None, box=None, five_points=None, image_hw=None) -> np.ndarray:
    """2×3 matrix from the original image to the model input, following the model's ``preprocess``.

    - ``box``: square crop around a face box (landmark box in evaluation, detector box at run time),
      enlarged by ``box_scale``.
    - ``similarity`` / ``tanh``: 5-point alignment to FaRL's template (tanh adds the warp on top).
    - ``ffhq``: the FFHQ / CelebA-HQ square from 5 points (:func:`farl_edge.geometry.ffhq_matrix`).
      Without points (CelebAMask-HQ's images are CelebA-HQ's aligned crops) the whole image is
      taken, which is FaRL's own protocol on that data set: its ``align_matrix`` is the identity.
    - ``full``: the whole image resized (data sets whose images are already aligned).
    """
    preprocess = _pre(preprocess)
    kind = preprocess.warp
    if kind == "full" or (landmarks is None and box is None and five_points is None):
        if image_hw is None:
            raise ValueError("a 'full' crop needs the image size")
        h, w = image_hw
        return np.array([[size / w, 0, 0], [0, size / h, 0]], dtype=np.float64)
    if kind == "box" or five_points is None:
        if box is None:
            box = geometry.box_from_points(landmarks)
        return geometry.box_matrix(box, size, scale=float(preprocess.box_scale))
    if kind == "ffhq":
        return geometry.ffhq_matrix(five_points, size)
    return geometry.similarity_from_5pts(five_points, size)


def warp_source(image_rgb: np.ndarray, preprocess: PreprocessCfg | dict) -> np.ndarray:
    """The image ``warp_input`` samples: float32 in [0, 1] under the ``farl`` protocol (made once
    per frame by callers that warp several faces), else the uint8 image itself."""
    if _pre(preprocess).farl and image_rgb.dtype == np.uint8:
        return image_rgb.astype(np.float32) * np.float32(1 / 255)
    return image_rgb


def warp_input(image_rgb: np.ndarray, matrix: np.ndarray, size: int, preprocess: PreprocessCfg | dict) -> np.ndarray:
    """uint8 RGB image → warped RGB model input (tanh-warp when the model asks for it).

    uint8 out under the ``direct`` protocol; float32 in [0, 1] under ``farl`` (FaRL scales pixels
    to [0, 1] before warping, so its crops are never rounded to 8 bits).
    """
    preprocess = _pre(preprocess)
    image_rgb = warp_source(image_rgb, preprocess)
    if preprocess.warp == "tanh":
        return geometry.tanh_warp_image(image_rgb, matrix, size, float(preprocess.warp_factor),
                                        farl_grid=preprocess.farl)
    return geometry.warp_image(image_rgb, matrix, size)


def warp_label_map(labels: np.ndarray, matrix: np.ndarray, size: int, preprocess: PreprocessCfg | dict) -> np.ndarray:
    """(H, W) label map of the original image → the model input's (nearest neighbour), as ``warp_input``."""
    preprocess = _pre(preprocess)
    if preprocess.warp == "tanh":
        return geometry.tanh_warp_image(labels, matrix, size, float(preprocess.warp_factor),
                                        interpolation=cv2.INTER_NEAREST, farl_grid=preprocess.farl)
    return geometry.warp_image(labels, matrix, size, interpolation=cv2.INTER_NEAREST)


def landmarks_to_input(landmarks: np.ndarray, matrix: np.ndarray, size: int, preprocess: PreprocessCfg | dict) -> np.ndarray:
    """(K, 2) landmarks in original-image coordinates → model-input pixels (inverse of ``landmarks_to_image``)."""
    preprocess = _pre(preprocess)
    if preprocess.warp == "tanh":
        return geometry.tanh_warp_points(landmarks, matrix, size, float(preprocess.warp_factor),
                                         farl_grid=preprocess.farl)
    return geometry.transform_points(landmarks, matrix)


def to_tensor_layout(images_rgb: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 (0..255) or float crops (already in [0, 1], from the ``farl`` protocol)
    → (B, 3, H, W) float32 in [0, 1], the exported models' input."""
    if images_rgb.dtype == np.uint8:
        return np.ascontiguousarray(images_rgb.transpose(0, 3, 1, 2), dtype=np.float32) * np.float32(1 / 255)
    return np.ascontiguousarray(images_rgb.transpose(0, 3, 1, 2), dtype=np.float32)


def landmarks_to_image(landmarks: np.ndarray, matrix: np.ndarray, size: int, preprocess: PreprocessCfg | dict) -> np.ndarray:
    """(K, 2) landmarks in model-input pixels → original-image coordinates."""
    preprocess = _pre(preprocess)
    if preprocess.warp == "tanh":
        return geometry.tanh_unwarp_points(landmarks, matrix, size, float(preprocess.warp_factor),
                                           farl_grid=preprocess.farl)
    return geometry.transform_points(landmarks, geometry.invert_affine(matrix))


def logits_to_label_map(logits: np.ndarray, matrix: np.ndarray, size: int, preprocess: PreprocessCfg | dict, out_hw) -> np.ndarray:
    """(C, h, w) class scores at 1/4 of the network input → (H, W) uint8 label map of the original image.

    Scores are upsampled to the crop size ``size`` (bilinear, half-pixel centres: FaRL's
    ``F.interpolate(align_corners=False)``) and warped back before the argmax, as FaRL does.
    """
    c = logits.shape[0]
    scores = cv2.resize(np.ascontiguousarray(logits.transpose(1, 2, 0), dtype=np.float32), (size, size),
                        interpolation=cv2.INTER_LINEAR)
    scores = scores.reshape(size, size, c).transpose(2, 0, 1)
    preprocess = _pre(preprocess)
    if preprocess.warp == "tanh":
        back = geometry.tanh_unwarp_scores(scores, matrix, size, float(preprocess.warp_factor), out_hw,
                                           farl_grid=preprocess.farl)
    else:
        back = geometry.unwarp_scores(scores, matrix, out_hw)
    return back.argmax(axis=0).astype(np.uint8)
