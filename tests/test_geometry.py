"""farl_edge.geometry: alignment matrices, affine / tanh warps and their inverses."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from farl_edge import geometry as g


def _similarity(scale, angle, tx, ty):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def _label_scene(h=360, w=480):
    """Synthetic label map: shapes (classes 1..5) on class 6 (no background 0 anywhere, so 0 in
    an unwarped map can only come from outside the warped region)."""
    lab = np.full((h, w), 6, np.uint8)
    cv2.ellipse(lab, (240, 190), (120, 150), 0, 0, 360, 1, -1)
    cv2.rectangle(lab, (170, 130), (220, 160), 2, -1)
    cv2.rectangle(lab, (260, 130), (310, 160), 3, -1)
    cv2.circle(lab, (240, 215), 22, 4, -1)
    cv2.ellipse(lab, (240, 280), (55, 20), 0, 0, 360, 5, -1)
    return lab


def _interior(lab, margin):
    """Pixels whose (2*margin+1) neighbourhood holds a single label."""
    k = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    lo = cv2.erode(lab, k, borderType=cv2.BORDER_REPLICATE)
    hi = cv2.dilate(lab, k, borderType=cv2.BORDER_REPLICATE)
    return lo == hi


def _face_matrix(size=448):
    # 5 points of a slightly rotated face in a 360x480 scene
    pts = np.array([[200, 160], [285, 150], [245, 205], [210, 265], [280, 258]], float)
    return g.similarity_from_5pts(pts, size)


# ------------------------------------------------------------------------------ matrices
def test_template():
    assert g.FARL_TEMPLATE_512.shape == (5, 2)
    np.testing.assert_allclose(g.template_points(512), g.FARL_TEMPLATE_512)
    np.testing.assert_allclose(g.template_points(448), g.FARL_TEMPLATE_512 * 448 / 512)
    np.testing.assert_allclose(g.template_points(256)[0], [98.0, 113.0])


@pytest.mark.parametrize("seed", range(5))
def test_estimate_similarity_recovers_known_transform(seed):
    rng = np.random.default_rng(seed)
    m = _similarity(rng.uniform(0.2, 4), rng.uniform(-np.pi, np.pi), *rng.uniform(-200, 200, 2))
    src = rng.uniform(0, 500, (5, 2))
    est = g.estimate_similarity(src, g.transform_points(src, m))
    np.testing.assert_allclose(est, m, atol=1e-6)


def test_similarity_from_5pts_exact_and_no_reflection():
    m = _similarity(0.7, 0.25, 30, -12)
    face = g.transform_points(g.template_points(448), g.invert_affine(m))  # face whose fit is m
    np.testing.assert_allclose(g.similarity_from_5pts(face, 448), m, atol=1e-6)
    # mirrored points: best fit must still be a proper rotation (det > 0), never a reflection
    mirrored = face * np.array([-1.0, 1.0])
    est = g.estimate_similarity(mirrored, g.template_points(448))
    assert np.linalg.det(est[:, :2]) > 0
    a = est[:, :2]
    np.testing.assert_allclose(a[0, 0], a[1, 1], atol=1e-9)
    np.testing.assert_allclose(a[0, 1], -a[1, 0], atol=1e-9)


def test_five_points_indices():
    lm68 = np.arange(68 * 2, dtype=float).reshape(68, 2)
    p5 = g.five_points_from_68(lm68)
    np.testing.assert_allclose(p5[0], lm68[36:42].mean(0))
    np.testing.assert_allclose(p5[1], lm68[42:48].mean(0))
    np.testing.assert_allclose(p5[2:], lm68[[30, 48, 54]])
    lm98 = np.arange(98 * 2, dtype=float).reshape(98, 2)
    np.testing.assert_allclose(g.five_points_from_98(lm98), lm98[[96, 97, 54, 76, 82]])
    assert g.five_points_from_68(np.stack([lm68, lm68])).shape == (2, 5, 2)
    with pytest.raises(ValueError):
        g.five_points_from_68(lm98)


def test_box_matrix_centre_and_side():
    box = (100.0, 50.0, 180.0, 250.0)  # w 80, h 200
    for scale in (1.0, 1.25):
        m = g.box_matrix(box, 448, scale)
        np.testing.assert_allclose(g.transform_points([140.0, 150.0], m), [224.0, 224.0])
        side = 200 * scale
        corners = g.transform_points([[140 - side / 2, 150 - side / 2], [140 + side / 2, 150 + side / 2]], m)
        np.testing.assert_allclose(corners, [[0, 0], [448, 448]], atol=1e-9)
    np.testing.assert_allclose(g.box_from_points([[3, 4], [10, 2], [5, 9]]), [3, 2, 10, 9])


def test_affine_algebra():
    m = _similarity(1.3, 0.4, 5, 7)
    pts = np.random.default_rng(0).uniform(0, 100, (10, 2))
    np.testing.assert_allclose(g.transform_points(g.transform_points(pts, m), g.invert_affine(m)), pts, atol=1e-9)
    np.testing.assert_allclose(g.compose_affine(g.invert_affine(m), m), np.eye(3)[:2], atol=1e-12)


# ------------------------------------------------------------------------------ pixel convention
def test_warp_image_half_pixel_convention():
    img = np.zeros((20, 30), np.float32)
    img[7, 11] = 1.0  # pixel centre (11.5, 7.5)
    # 2x upscale: continuous (x, y) -> (2x, 2y); the pixel spans [22, 24) x [14, 16) afterwards
    w = g.warp_image(img, [[2, 0, 0], [0, 2, 0]], (40, 60), interpolation=cv2.INTER_NEAREST)
    ys, xs = np.nonzero(w)
    assert set(xs) == {22, 23} and set(ys) == {14, 15}
    # integer translation is exact
    w = g.warp_image(img, [[1, 0, 3], [0, 1, -2]], (20, 30))
    assert w[5, 14] == 1.0 and w.sum() == 1.0
    # bilinear: the blob's centroid follows transform_points
    img = np.zeros((64, 64), np.float32)
    cv2.circle(img, (30, 20), 6, 1.0, -1)  # OpenCV centre (30, 20) = continuous (30.5, 20.5)
    m = _similarity(1.7, 0.3, 10, 4)
    w = g.warp_image(img, m, (160, 160))
    ys, xs = np.mgrid[0:160, 0:160]
    centroid = np.array([(w * (xs + 0.5)).sum(), (w * (ys + 0.5)).sum()]) / w.sum()
    np.testing.assert_allclose(centroid, g.transform_points([30.5, 20.5], m), atol=0.05)


def test_warp_image_colour_and_border():
    img = np.full((10, 10, 3), 200, np.uint8)
    w = g.warp_image(img, [[1, 0, 5], [0, 1, 0]], 10, border_value=(1, 2, 3))
    assert w.shape == (10, 10, 3)
    assert tuple(w[0, 0]) == (1, 2, 3) and tuple(w[0, 9]) == (200, 200, 200)


# ------------------------------------------------------------------------------ round trips
def test_similarity_point_round_trip():
    m = _face_matrix()
    pts = np.random.default_rng(1).uniform(0, 480, (500, 2))
    back = g.transform_points(g.transform_points(pts, m), g.invert_affine(m))
    assert np.abs(back - pts).max() < 0.05


@pytest.mark.parametrize("factor", [0.0, 0.3, 0.8, 1.0])
def test_tanh_point_round_trip(factor):
    m = _face_matrix()
    pts = np.random.default_rng(2).uniform(-50, 530, (2000, 2))
    warped = g.tanh_warp_points(pts, m, 448, factor)
    if factor > 0:
        assert warped.min() > 0 and warped.max() < 448  # the whole plane lands inside the input
    back = g.tanh_unwarp_points(warped, m, 448, factor)
    assert np.abs(back - pts).max() < 0.05
    # and the other way round, from model-input pixel centres
    q = np.random.default_rng(3).uniform(0.5, 447.5, (2000, 2))
    np.testing.assert_allclose(g.tanh_warp_points(g.tanh_unwarp_points(q, m, 448, factor), m, 448, factor), q,
                               atol=1e-6)


def test_tanh_profile():
    c = np.linspace(-3, 3, 6001)
    v = g.tanh_forward(c, 0.8)
    np.testing.assert_allclose(v[np.abs(c) <= 0.2], c[np.abs(c) <= 0.2])  # linear centre
    assert np.all(np.diff(v) > 0) and np.abs(v).max() < 1  # monotone, bounded
    dv = np.gradient(v, c)
    assert abs(dv[np.argmin(np.abs(c - 0.2))] - 1) < 1e-3  # C1 at the seam
    # facer's definition: tanh((c - (1 - f)) / f) * f + 1 - f beyond the seam
    np.testing.assert_allclose(g.tanh_forward(0.7, 0.8), np.tanh(0.5 / 0.8) * 0.8 + 0.2)
    np.testing.assert_allclose(g.tanh_inverse(g.tanh_forward(c, 0.8), 0.8), c, atol=1e-9)
    np.testing.assert_allclose(g.tanh_forward(c, 0.0), c)
    assert np.isfinite(g.tanh_inverse(np.array([1.0, -1.0, 2.0]), 0.8)).all()


def test_tanh_warp_image_matches_points():
    img = np.zeros((360, 480), np.float32)
    cv2.circle(img, (90, 300), 5, 1.0, -1)  # far from the face centre: lands in the tanh band
    m = _face_matrix()
    w = g.tanh_warp_image(img, m, 448, 0.8)
    assert w.shape == (448, 448)
    q = g.tanh_warp_points([90.5, 300.5], m, 448, 0.8)
    ys, xs = np.nonzero(w > 0.5)
    assert len(xs) > 0
    centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    assert np.linalg.norm(centre - q) < 1.0
    # the whole original image is visible: its four corners land inside the input
    corners = g.tanh_warp_points([[0, 0], [480, 0], [0, 360], [480, 360]], m, 448, 0.8)
    assert corners.min() > 0 and corners.max() < 448


# ------------------------------------------------------------------------------ label maps
@pytest.mark.parametrize("size", [448, 256])  # up- and down-sampling into the model input
def test_mask_round_trip_similarity(size):
    lab = _label_scene()
    m = _face_matrix(size)
    model = g.warp_image(lab, m, size, interpolation=cv2.INTER_NEAREST)
    back = g.unwarp_labels(model, m, lab.shape)
    assert back.dtype == lab.dtype and back.shape == lab.shape
    q = g.transform_points(g._pixel_centres(*lab.shape), m)
    inside = np.all((q > 3) & (q < size - 3), axis=-1)
    region = inside & _interior(lab, 3)
    assert region.sum() > 0.3 * lab.size
    assert (back[region] == lab[region]).mean() >= 0.995
    outside = np.any((q < -1) | (q > size + 1), axis=-1)
    assert outside.sum() > 1000
    assert np.all(back[outside] == 0)  # outside the warped region: background
    img_inner = np.zeros(lab.shape, bool)
    img_inner[3:-3, 3:-3] = True
    assert np.all(back[inside & img_inner] != 0)


@pytest.mark.parametrize("size", [448, 256])
def test_mask_round_trip_tanh(size):
    lab = _label_scene()
    m = _face_matrix(size)
    model = g.tanh_warp_image(lab, m, size, 0.8, interpolation=cv2.INTER_NEAREST)
    back = g.tanh_unwarp_labels(model, m, size, 0.8, lab.shape)
    assert back.dtype == lab.dtype and back.shape == lab.shape
    c = g.transform_points(g._pixel_centres(*lab.shape), m) / size * 2 - 1
    region = np.all(np.abs(c) < 1.0, axis=-1) & _interior(lab, 3)
    assert region.sum() > 0.3 * lab.size
    assert (back[region] == lab[region]).mean() >= 0.995
    # the whole image is covered: nothing is forced to background
    assert (back == lab)[_interior(lab, 8)].mean() > 0.99


def test_unwarp_scores_argmax_matches_labels():
    lab = _label_scene()
    m = _face_matrix()
    model = g.warp_image(lab, m, 448, interpolation=cv2.INTER_NEAREST)
    onehot = (np.arange(7)[:, None, None] == model[None]).astype(np.float32) * 5 - 2  # logits
    scores = g.unwarp_scores(onehot, m, lab.shape)
    assert scores.shape == (7,) + lab.shape and scores.dtype == np.float32
    pred = scores.argmax(0)
    q = g.transform_points(g._pixel_centres(*lab.shape), m)
    inside = np.all((q > 3) & (q < 445), axis=-1)
    region = inside & _interior(lab, 3)
    assert (pred[region] == lab[region]).mean() >= 0.995
    far = np.any((q < -2) | (q > 450), axis=-1)
    assert np.all(scores[:, far] == 0) and np.all(pred[far] == 0)  # fill 0 -> argmax background
    # tanh version
    model_t = g.tanh_warp_image(lab, m, 448, 0.8, interpolation=cv2.INTER_NEAREST)
    onehot_t = (np.arange(7)[:, None, None] == model_t[None]).astype(np.float32)
    pred_t = g.tanh_unwarp_scores(onehot_t, m, 448, 0.8, lab.shape).argmax(0)
    c = q / 448 * 2 - 1
    region_t = np.all(np.abs(c) < 1.0, axis=-1) & _interior(lab, 3)
    assert (pred_t[region_t] == lab[region_t]).mean() >= 0.995


# ------------------------------------------------------------------------------ real data
def test_real_300w_face(helen_dir):
    from farl_edge.datasets import read_pts

    pts_file = sorted(helen_dir.glob("*.pts"))[0]
    image = cv2.cvtColor(cv2.imread(str(pts_file.with_suffix(".jpg"))), cv2.COLOR_BGR2RGB)
    lm = read_pts(pts_file) - 0.5  # continuous coordinates
    m = g.similarity_from_5pts(g.five_points_from_68(lm), 448)
    # transform_points is plain matrix math
    manual = np.array([m[:, :2] @ p + m[:, 2] for p in lm])
    np.testing.assert_allclose(g.transform_points(lm, m), manual, atol=1e-9)
    # the 5 points land near the template (least-squares fit of a real face)
    resid = g.transform_points(g.five_points_from_68(lm), m) - g.template_points(448)
    assert np.linalg.norm(resid, axis=1).max() < 25
    # warped pixels hold the original colour at their pre-image (half-pixel convention)
    warped = g.warp_image(image, m, 448)
    inv = g.invert_affine(m)
    img_f = image.astype(np.float64)

    def bilinear(p):
        x, y = p - 0.5
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        ax, ay = x - x0, y - y0
        return ((1 - ax) * (1 - ay) * img_f[y0, x0] + ax * (1 - ay) * img_f[y0, x0 + 1]
                + (1 - ax) * ay * img_f[y0 + 1, x0] + ax * ay * img_f[y0 + 1, x0 + 1])

    q = g.transform_points(lm, m)
    for qx, qy in q[::5]:
        i, j = int(qy), int(qx)
        src = g.transform_points([j + 0.5, i + 0.5], inv)
        np.testing.assert_allclose(warped[i, j], bilinear(src), atol=3.0)
    # box crop: all landmarks inside the model input
    qb = g.transform_points(lm, g.box_matrix(g.box_from_points(lm), 448, 1.0))
    assert qb.min() >= -1e-9 and qb.max() <= 448 + 1e-9
    # tanh warp: same consistency through the non-linear grid
    wt = g.tanh_warp_image(image, m, 448, 0.8)
    qt = g.tanh_warp_points(lm, m, 448, 0.8)
    for qx, qy in qt[::5]:
        i, j = int(qy), int(qx)
        src = g.tanh_unwarp_points([j + 0.5, i + 0.5], m, 448, 0.8)
        np.testing.assert_allclose(wt[i, j], bilinear(src), atol=3.0)
