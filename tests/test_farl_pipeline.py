"""FaRL's evaluation protocol around the network, end to end on real faces.

FaRL's own preprocessing and decoding (``farl/experiments/*/augmenters/test*.yaml``, its
``blueprint`` geometry augmenters, ``heatmap2points`` / ``denormalize_points``, and the bilinear
resizes of its networks) are re-implemented below from its published code as fixtures, not as a
dependency. They run on the same weights as the project's pipeline (``evaluate.prepare`` → model →
``crops.*_to_image``), which must give the same crops, logits / heatmaps (≤ 1e-4) and landmarks
(≤ 0.01 px, after the documented +0.5 px of the project's pixel convention).

FaRL works in pixel-index coordinates (pixel centres at integers); the project in continuous ones
(pixel i spans [i, i + 1)). The fixtures take the project's face geometry (box, 5-point matrix) in
FaRL's convention: a continuous matrix M becomes T(-½) · M · T(+½).
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import shared_data

CROP = 256  # the small models' 224 network under FaRL's protocol (FaRL: 512 → 448); same code path


# ----------------------------------------------------------------------------- FaRL, re-implemented
def farl_tanh_warp_transform(coords, matrix3, warp_factor, warped_shape):
    """blueprint ``_tanh_warp_transform``: warped-image coordinates → original-image coordinates."""
    h, w = warped_shape
    coords = np.array(coords, dtype=np.float32)
    if warp_factor > 0:
        coords = coords / np.array([w, h], dtype=coords.dtype) * 2 - 1
        hi, lo = coords > 1.0 - warp_factor, coords < -1.0 + warp_factor
        coords[hi] = np.arctanh(np.clip((coords[hi] - 1.0 + warp_factor) / warp_factor, -0.999, 0.999)) \
            * warp_factor + 1.0 - warp_factor
        coords[lo] = np.arctanh(np.clip((coords[lo] + 1.0 - warp_factor) / warp_factor, -0.999, 0.999)) \
            * warp_factor - 1.0 + warp_factor
        coords = (coords + 1) / 2 * np.array([w, h], dtype=coords.dtype)
    homo = np.concatenate([coords, np.ones([len(coords), 1], dtype=coords.dtype)], axis=1)
    homo = homo @ np.linalg.inv(matrix3).T
    return (homo[:, :2] / homo[:, [2, 2]]).astype(coords.dtype)


def farl_inverted_tanh_warp_transform(coords, matrix3, warp_factor, warped_shape):
    """blueprint ``_inverted_tanh_warp_transform``: original-image coordinates → warped image."""
    h, w = warped_shape
    coords = np.array(coords, dtype=np.float32)
    homo = np.concatenate([coords, np.ones([len(coords), 1], dtype=coords.dtype)], axis=1) @ np.asarray(matrix3).T
    coords = (homo[:, :2] / homo[:, [2, 2]]).astype(coords.dtype)
    if warp_factor > 0:
        coords = coords / np.array([w, h], dtype=coords.dtype) * 2 - 1
        hi, lo = coords > 1.0 - warp_factor, coords < -1.0 + warp_factor
        coords[hi] = np.tanh((coords[hi] - 1.0 + warp_factor) / warp_factor) * warp_factor + 1.0 - warp_factor
        coords[lo] = np.tanh((coords[lo] + 1.0 - warp_factor) / warp_factor) * warp_factor - 1.0 + warp_factor
        coords = (coords + 1) / 2 * np.array([w, h], dtype=coords.dtype)
    return coords


def farl_map(shape, fn):
    """blueprint ``_forge_transform_map``: for each output pixel index (x, y), ``fn([x, y])``."""
    h, w = shape
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    return fn(np.stack([xx, yy], axis=-1).reshape(-1, 2)).reshape(h, w, 2)


def farl_remap(image, map_xy):
    """blueprint ``TransformByMap(interpolation='bilinear')``."""
    return cv2.remap(image, map_xy[..., 0], map_xy[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                     borderValue=0)


def farl_crop_and_resize_matrix(box_xyxy, size):
    """blueprint ``UpdateCropAndResizeMatrix(align_corners=False)``: box in index coordinates."""
    x1, y1, x2, y2 = box_xyxy
    ax, ay = size / (x2 - x1), size / (y2 - y1)
    return np.array([[ax, 0, -x1 * ax - 0.5], [0, ay, -y1 * ay - 0.5], [0, 0, 1]])


def to_index_convention(m2x3):
    """A continuous-coordinate affine (the project's) as FaRL's index-coordinate 3×3 matrix."""
    m3 = np.vstack([np.asarray(m2x3, np.float64), [0, 0, 1]])
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    return np.linalg.inv(shift) @ m3 @ shift


def farl_heatmap2points(heatmap):
    """farl/network/geometry.py ``heatmap2points``: normalised (x, y) in [0, 1]."""
    _, _, h, w = heatmap.shape
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    mass = torch.clamp(heatmap.sum([2, 3]), min=1e-6)
    pts = torch.stack([(xx * heatmap).sum([2, 3]) / mass, (yy * heatmap).sum([2, 3]) / mass], dim=-1)
    return (pts + 0.5) / torch.tensor([[[w, h]]]).to(pts)


def farl_network(direct_model, image01, network_size):
    """FaRL's backbone resizes its [0, 1] input bilinearly to the network size before normalising."""
    x = torch.from_numpy(image01.transpose(2, 0, 1)[None].copy())
    x = F.interpolate(x, network_size, mode="bilinear", align_corners=False)
    with torch.no_grad():
        return direct_model(x)


# ----------------------------------------------------------------------------- helpers
def farl_protocol_model(name: str, crop: int = CROP):
    """A shipped model under FaRL's protocol (crop → network in the graph), and the same weights direct."""
    from farl_edge.models import create_model

    model = create_model(name)
    direct = create_model(name)
    model.cfg = model.cfg.with_protocol("farl", crop_size=crop)
    return model.eval(), direct.eval()


def project_run(model, sample):
    from farl_edge import crops
    from farl_edge.evaluate import prepare

    crop, matrix, hw = prepare(sample, model.cfg)
    with torch.no_grad():
        out = model(torch.from_numpy(crops.to_tensor_layout(crop[None])))
    return crop, matrix, hw, out


# ----------------------------------------------------------------------------- tests
def test_parsing_follows_farl_celebamask_hq_protocol_end_to_end():
    """CelebAMask-HQ: FaRL's align_matrix is the identity on the 512 image (farl/datasets/prepare.py),
    warp_factor 0, logits upsampled to the crop and warped back bilinearly before the argmax."""
    from farl_edge import crops
    from farl_edge.datasets import open_dataset

    model, direct = farl_protocol_model("farl-small-celebm")
    samples = list(open_dataset(shared_data("celebamask-hq", "val")))[:2]
    for sample in samples:
        crop, matrix, hw, logits = project_run(model, sample)
        image01 = sample.load_image().astype(np.float32) / 255  # FaRL's Normalize255, before any warp
        # FaRL's CelebAMask-HQ images are 512² and its matrix the identity; a CROP-sized crop of the
        # same image is the resize FaRL's own data preparation applies.
        m_idx = to_index_convention(matrix)
        ref_crop = farl_remap(image01, farl_map((CROP, CROP), lambda c: farl_tanh_warp_transform(c, m_idx, 0.0,
                                                                                                   (CROP, CROP))))
        assert crop.dtype == np.float32 and np.abs(crop - ref_crop).max() <= 1e-6
        ref_logits = farl_network(direct, ref_crop, model.cfg.input_size)
        assert (logits - ref_logits).abs().max().item() <= 1e-4
        # FaRL: F.interpolate(logits, crop, bilinear) → GetInvertedTransformMap + bilinear remap → argmax
        up = F.interpolate(ref_logits, (CROP, CROP), mode="bilinear", align_corners=False)[0].numpy()
        inv_map = farl_map(hw, lambda c: farl_inverted_tanh_warp_transform(c, m_idx, 0.0, (CROP, CROP)))
        ref_label = farl_remap(np.ascontiguousarray(up.transpose(1, 2, 0)), inv_map).argmax(-1)
        label = crops.logits_to_label_map(logits[0].numpy(), matrix, CROP, model.cfg.preprocess, hw)
        assert (label == ref_label).mean() >= 0.9999


def test_identity_protocol_on_512_celebamask_images_is_farls_exactly():
    """At the real 512 crop the CelebAMask-HQ matrix is the identity: the crop is the image / 255."""
    from farl_edge.datasets import open_dataset
    from farl_edge.evaluate import prepare
    from farl_edge.registry import get_config

    cfg = get_config("farl-b16-celebm-448")
    assert (cfg.preprocess.protocol, cfg.crop_size, cfg.input_size) == ("farl", 512, 448)
    sample = list(open_dataset(shared_data("celebamask-hq", "val")))[0]
    crop, matrix, _ = prepare(sample, cfg)
    np.testing.assert_allclose(matrix, [[1, 0, 0], [0, 1, 0]])
    assert np.abs(crop - sample.load_image().astype(np.float32) / 255).max() <= 1e-6


@pytest.mark.parametrize("warp_factor", [0.0, 0.8])
def test_alignment_follows_farl_box_protocol_end_to_end(warp_factor):
    """300-W: box crop (FaRL's UpdateCropAndResizeMatrix), float warp, heatmaps, FaRL's decode,
    ``denormalize_points`` and the inverse (tanh-)warp back to the image: the project's landmarks
    are FaRL's + 0.5 px (its continuous pixel convention)."""
    from farl_edge import crops, geometry
    from farl_edge.datasets import open_dataset

    model, direct = farl_protocol_model("farl-small-300w")
    pre = {**model.cfg.preprocess.to_dict(), **({"warp": "tanh", "warp_factor": warp_factor} if warp_factor else {})}
    model.cfg = dataclasses.replace(model.cfg, preprocess=pre)
    for sample in list(open_dataset(shared_data("300w", "test-helen")))[:2]:
        crop, matrix, hw, (landmarks, heatmaps) = project_run(model, sample)
        if warp_factor:
            m_idx = to_index_convention(matrix)
        else:  # FaRL's own box formula, on the project's square box (continuous → index: -0.5)
            box = geometry.box_from_points(sample.landmarks)
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            half = max(box[2] - box[0], box[3] - box[1]) * model.cfg.preprocess.box_scale / 2
            m_idx = farl_crop_and_resize_matrix((cx - half - 0.5, cy - half - 0.5, cx + half - 0.5, cy + half - 0.5),
                                                CROP)
            np.testing.assert_allclose(m_idx, to_index_convention(matrix), atol=1e-9)
        image01 = sample.load_image().astype(np.float32) / 255
        ref_crop = farl_remap(image01, farl_map((CROP, CROP), lambda c: farl_tanh_warp_transform(
            c, m_idx, warp_factor, (CROP, CROP))))
        # cv2's warpAffine and remap both sample on a 1/32-pixel grid; coordinates computed in float64
        # (ours) vs float32 (FaRL's maps) can land in neighbouring bins: ~1e-5 of the [0, 1] range
        assert np.abs(crop - ref_crop).max() <= 5e-5
        _, ref_heat = farl_network(direct, ref_crop, model.cfg.input_size)
        assert (heatmaps - ref_heat).abs().max().item() <= 1e-4
        ref_crop_pts = farl_heatmap2points(ref_heat) * CROP - 0.5  # denormalize_points(pred, 512, 512)
        ref_image_pts = farl_tanh_warp_transform(ref_crop_pts[0].numpy(), m_idx, warp_factor, (CROP, CROP))
        ours = crops.landmarks_to_image(landmarks[0].numpy(), matrix, CROP, model.cfg.preprocess)
        assert np.abs(ours - (ref_image_pts + 0.5)).max() <= 0.01


def test_exported_graph_takes_the_crop_and_resizes_inside(tmp_path):
    """Under FaRL's protocol the ONNX graph takes the crop; its outputs match PyTorch's."""
    pytest.importorskip("onnx")
    from farl_edge.export import ExportRequest, export
    from farl_edge.runtime import load

    model, _ = farl_protocol_model("farl-small-300w")
    out = tmp_path / "art"
    export(ExportRequest(model=model, target="onnx", precision="fp32", output=out, eval_size=2, log=lambda *_: None))
    session = load(out)
    assert session.manifest["input_size"] == CROP and session.manifest["network_size"] == 224
    assert session.manifest["inputs"][0]["shape"][-1] == CROP
    assert session.manifest["outputs"][1]["shape"][-1] == 56
    x = np.random.default_rng(0).random((1, 3, CROP, CROP), dtype=np.float32)
    with torch.no_grad():
        ref_landmarks, _ = model(torch.from_numpy(x))
    assert session.validated  # the export's own parity check ran on crops made by the farl protocol
    assert np.abs(session(x)["landmarks"] - ref_landmarks.numpy()).max() <= 0.01  # px; fp32 graph vs eager


def test_ffhq_alignment_is_facers_celebamask_hq_quad():
    """facer's ``get_face_align_matrix_celebm`` (FFHQ recipe), re-implemented in index coordinates."""
    from farl_edge import geometry

    pts = np.array([[180.0, 220.0], [300.0, 214.0], [242.0, 290.0], [200.0, 350.0], [290.0, 346.0]])

    def facer_quad(lm):
        rot90 = lambda v: np.array([-v[1], v[0]])  # noqa: E731
        eye_avg = (lm[0] + lm[1]) * 0.5 + 0.5
        mouth_avg = (lm[3] + lm[4]) * 0.5 + 0.5
        e2e, e2m = lm[1] - lm[0], mouth_avg - eye_avg
        x = e2e - rot90(e2m)
        x /= np.hypot(*x)
        x *= max(np.hypot(*e2e) * 2.0, np.hypot(*e2m) * 1.8)
        y, c = rot90(x), eye_avg + e2m * 0.1
        return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])[[0, 3, 2, 1]]

    # facer's index-coordinate points + 0.5 are the project's continuous ones
    np.testing.assert_allclose(geometry.ffhq_quad(pts + 0.5), facer_quad(pts), atol=1e-9)
    m = geometry.ffhq_matrix(pts + 0.5, 512)
    corners = geometry.transform_points(geometry.ffhq_quad(pts + 0.5), m)
    np.testing.assert_allclose(corners, [[0, 0], [512, 0], [512, 512], [0, 512]], atol=1e-6)


def test_edge_variants_and_small_models_keep_the_direct_path():
    from farl_edge.registry import get_config

    for name in ("farl-b16-celebm-448-edge", "farl-b16-300w-448-edge", "farl-small-300w", "farl-small-celebm"):
        cfg = get_config(name)
        assert cfg.preprocess.protocol == "direct" and cfg.crop_size == cfg.input_size, name
    for name in ("farl-b16-lapa-448", "farl-b16-celebm-448", "farl-b16-300w-448", "farl-b16-wflw-448",
                 "farl-b16-aflw19-448"):
        cfg = get_config(name)
        assert (cfg.crop_size, cfg.input_size) == (512, 448), name
