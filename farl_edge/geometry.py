"""Face geometry: alignment matrices, affine and tanh warps, and their exact inverses.

Torch-free (numpy + OpenCV): the edge runtime shares this module.

Coordinate convention
---------------------
Everything here uses **continuous pixel coordinates**: pixel ``i`` spans ``[i, i + 1)``, so its
centre is at ``i + 0.5`` and an image of width ``W`` covers ``[0, W)``. Points are ``(..., 2)``
arrays of ``(x, y)``. Image shapes are ``(H, W[, C])``; ``out_hw`` arguments are ``(height,
width)``; a ``size`` argument is an ``int`` (square) or an ``(height, width)`` pair.

An affine "matrix" is a ``(2, 3)`` array ``m`` mapping *source-image* continuous coordinates to
*model-input* continuous coordinates: ``q = m[:, :2] @ p + m[:, 2]``.

OpenCV's ``warpAffine``/``remap`` use integer pixel centres (pixel ``i`` centred at ``i``). Every
OpenCV call here converts: ``M_cv = T(-0.5) @ M @ T(+0.5)`` (``T(t)`` is the translation by
``(t, t)``), and remap maps hold ``continuous_source_coordinate - 0.5``.

Tanh warp (FaRL / facer ``tanh_warp_transform``)
-----------------------------------------------
``m`` maps the original image onto an aligned, *not yet warped* ``size`` crop. Aligned
coordinates are normalised per axis to ``c = x / size * 2 - 1`` (the crop is ``c`` in [-1, 1]).
With warp factor ``f`` in (0, 1], each axis goes through

    g(c) = c                                              if |c| <= 1 - f
    g(c) = sign(c) * (f * tanh((|c| - (1 - f)) / f) + 1 - f)   otherwise

and back to pixels with ``(g + 1) / 2 * size``. The centre ``|c| <= 1 - f`` stays linear (and
C1-continuous at the seam); everything outside is compressed into the border band, so the whole
original image stays visible. ``f = 0`` is the plain affine crop. The inverse is analytic
(``atanh``); the argument of ``atanh`` is clamped to ``1 - 1e-9`` so points on or outside the
warped image's edge map to (large) finite coordinates instead of inf. facer clamps more
(``1e-3``), which only matters for points within ~0 px of the edge.

Template: ``FARL_TEMPLATE_512`` is facer's canonical 5-point face in a 512 frame; here it is
scaled by ``size / 512`` (continuous coordinates). facer scales it by ``(size - 1) / 512``, a
0.2 % difference at 448.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "FARL_TEMPLATE_512",
    "template_points",
    "estimate_similarity",
    "similarity_from_5pts",
    "five_points_from_68",
    "five_points_from_98",
    "box_from_points",
    "box_matrix",
    "to_3x3",
    "invert_affine",
    "compose_affine",
    "transform_points",
    "warp_image",
    "unwarp_labels",
    "unwarp_scores",
    "tanh_forward",
    "tanh_inverse",
    "tanh_warp_points",
    "tanh_unwarp_points",
    "tanh_warp_image",
    "tanh_unwarp_labels",
    "tanh_unwarp_scores",
]

# left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner (image sides)
FARL_TEMPLATE_512 = np.array(
    [[196.0, 226.0], [316.0, 226.0], [256.0, 286.0], [220.0, 360.4], [292.0, 360.4]],
    dtype=np.float64,
)
FARL_TEMPLATE_512.flags.writeable = False

_ATANH_CLAMP = 1.0 - 1e-9


# ----------------------------------------------------------------------------- helpers
def _hw(size) -> tuple[int, int]:
    if np.isscalar(size):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def _pts(points) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1] != 2:
        raise ValueError(f"points must have shape (..., 2), got {p.shape}")
    return p


def _mat(m) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.shape == (3, 3):
        m = m[:2]
    if m.shape != (2, 3):
        raise ValueError(f"affine matrix must be (2, 3) (or (3, 3)), got {m.shape}")
    return m


def to_3x3(m) -> np.ndarray:
    """(2, 3) affine -> (3, 3) homogeneous matrix."""
    out = np.eye(3)
    out[:2] = _mat(m)
    return out


def _to_cv(m) -> np.ndarray:
    """Continuous-coordinate affine -> OpenCV (integer-centre) affine: T(-0.5) @ M @ T(+0.5)."""
    m = _mat(m)
    a = m[:, :2]
    t = m[:, 2] + a @ np.array([0.5, 0.5]) - 0.5
    return np.concatenate([a, t[:, None]], axis=1)


def _pixel_centres(h: int, w: int) -> np.ndarray:
    """(h, w, 2) continuous coordinates of the pixel centres."""
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64) + 0.5, np.arange(w, dtype=np.float64) + 0.5,
                         indexing="ij")
    return np.stack([xs, ys], axis=-1)


def _remap(src: np.ndarray, src_coords: np.ndarray, interpolation: int, border_value) -> np.ndarray:
    """Sample ``src`` at continuous coordinates ``src_coords`` (h, w, 2) with cv2.remap."""
    map_x = (src_coords[..., 0] - 0.5).astype(np.float32)
    map_y = (src_coords[..., 1] - 0.5).astype(np.float32)
    # coordinates far outside the image: keep them outside, but finite and small enough for
    # OpenCV's fixed-point path
    lim = float(max(src.shape[0], src.shape[1]) + 16)
    np.clip(map_x, -16.0, lim, out=map_x)
    np.clip(map_y, -16.0, lim, out=map_y)
    return cv2.remap(src, map_x, map_y, interpolation=interpolation,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)


def _label_src(lab: np.ndarray) -> np.ndarray:
    """Label maps in a dtype OpenCV's nearest warps accept (float32 is exact below 2**24)."""
    if lab.dtype in (np.uint8, np.uint16, np.int16, np.float32):
        return lab
    return lab.astype(np.float32)


def _border(value, channels: int):
    if np.isscalar(value):
        return (float(value),) * min(max(channels, 1), 4)
    return tuple(float(v) for v in value)


def _remap_chw(scores: np.ndarray, src_coords: np.ndarray, fill: float) -> np.ndarray:
    """Bilinear remap of a (C, H, W) float array, constant ``fill`` outside."""
    scores = np.asarray(scores)
    if scores.ndim != 3:
        raise ValueError(f"scores must be (C, H, W), got {scores.shape}")
    dtype = np.float64 if scores.dtype == np.float64 else np.float32
    out = np.empty((scores.shape[0],) + src_coords.shape[:2], dtype=dtype)
    map_x = (src_coords[..., 0] - 0.5).astype(np.float32)
    map_y = (src_coords[..., 1] - 0.5).astype(np.float32)
    lim = float(max(scores.shape[1], scores.shape[2]) + 16)
    np.clip(map_x, -16.0, lim, out=map_x)
    np.clip(map_y, -16.0, lim, out=map_y)
    for c0 in range(0, scores.shape[0], 4):  # up to 4 channels per OpenCV call
        chunk = np.ascontiguousarray(np.moveaxis(scores[c0:c0 + 4].astype(dtype, copy=False), 0, -1))
        res = cv2.remap(chunk, map_x, map_y, interpolation=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=(float(fill),) * 4)
        if res.ndim == 2:
            res = res[..., None]
        out[c0:c0 + 4] = np.moveaxis(res, -1, 0)
    return out


# ----------------------------------------------------------------------------- templates, fits
def template_points(size) -> np.ndarray:
    """FaRL's canonical 5 points scaled from the 512 frame to ``size`` (int or (h, w))."""
    h, w = _hw(size)
    return FARL_TEMPLATE_512 * np.array([w / 512.0, h / 512.0])


def estimate_similarity(src, dst) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping
    ``src`` (N, 2) onto ``dst`` (N, 2), by Umeyama's method. Returns a (2, 3) matrix."""
    src = _pts(src).reshape(-1, 2)
    dst = _pts(dst).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need matching point sets with >= 2 points, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0 ** 2).sum() / len(src)
    if var_s <= 0:
        raise ValueError("source points are degenerate (all identical)")
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s
    a = scale * rot
    t = mu_d - a @ mu_s
    return np.concatenate([a, t[:, None]], axis=1)


def similarity_from_5pts(points5, size) -> np.ndarray:
    """Similarity mapping the 5 face points (eyes, nose tip, mouth corners) onto the FaRL template
    in a ``size`` frame."""
    p = _pts(points5)
    if p.shape != (5, 2):
        raise ValueError(f"expected 5 points (5, 2), got {p.shape}")
    return estimate_similarity(p, template_points(size))


def five_points_from_68(landmarks68) -> np.ndarray:
    """iBUG-68 -> (left eye centre, right eye centre, nose tip, left/right mouth corner)."""
    lm = _pts(landmarks68)
    if lm.shape[-2] != 68:
        raise ValueError(f"expected 68 landmarks, got {lm.shape}")
    return np.stack([lm[..., 36:42, :].mean(-2), lm[..., 42:48, :].mean(-2), lm[..., 30, :],
                     lm[..., 48, :], lm[..., 54, :]], axis=-2)


def five_points_from_98(landmarks98) -> np.ndarray:
    """WFLW-98 -> 5 points: pupils 96, 97; nose tip 54; mouth corners 76, 82."""
    lm = _pts(landmarks98)
    if lm.shape[-2] != 98:
        raise ValueError(f"expected 98 landmarks, got {lm.shape}")
    return lm[..., [96, 97, 54, 76, 82], :].copy()


def box_from_points(points) -> np.ndarray:
    """Bounding box (x0, y0, x1, y1) of a (K, 2) point set (NaN points ignored)."""
    p = _pts(points).reshape(-1, 2)
    return np.array([np.nanmin(p[:, 0]), np.nanmin(p[:, 1]), np.nanmax(p[:, 0]), np.nanmax(p[:, 1])])


def ffhq_quad(points5) -> np.ndarray:
    """The FFHQ / CelebA-HQ crop square (4 corners: top-left, top-right, bottom-right, bottom-left)
    from 5 face points, by the FFHQ recipe that facer's ``get_face_align_matrix_celebm`` follows:
    the square is centred a tenth of the way from the eyes to the mouth, its half-side the larger of
    2× the eye distance and 1.8× the eye-to-mouth distance."""
    p = _pts(points5)
    if p.shape != (5, 2):
        raise ValueError(f"expected 5 points (5, 2), got {p.shape}")
    eye_avg, mouth_avg = (p[0] + p[1]) / 2, (p[3] + p[4]) / 2
    eye_to_eye, eye_to_mouth = p[1] - p[0], mouth_avg - eye_avg
    rot90 = lambda v: np.array([-v[1], v[0]])  # noqa: E731
    x = eye_to_eye - rot90(eye_to_mouth)
    norm = np.hypot(*x)
    if norm <= 0:
        raise ValueError("degenerate face points (eyes and mouth coincide)")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = rot90(x)
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c + x - y, c + x + y, c - x + y])


def ffhq_matrix(points5, size) -> np.ndarray:
    """Similarity mapping the :func:`ffhq_quad` of 5 face points onto the ``size`` crop: the
    framing of CelebA-HQ's aligned images, for CelebAMask-HQ parsing models on unaligned frames."""
    h, w = _hw(size)
    return estimate_similarity(ffhq_quad(points5), np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]]))


def box_matrix(box, size, scale: float = 1.0) -> np.ndarray:
    """Axis-aligned crop: the square of side ``max(w, h) * scale`` centred on ``box`` (x0, y0, x1,
    y1) is mapped onto ``[0, size)^2`` (300-W style crop, no rotation)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * float(scale)
    if side <= 0:
        raise ValueError(f"degenerate box {box}")
    h, w = _hw(size)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    sx, sy = w / side, h / side
    return np.array([[sx, 0.0, w / 2 - sx * cx], [0.0, sy, h / 2 - sy * cy]])


# ----------------------------------------------------------------------------- affine algebra
def invert_affine(m) -> np.ndarray:
    m = _mat(m)
    a_inv = np.linalg.inv(m[:, :2])
    return np.concatenate([a_inv, (-a_inv @ m[:, 2])[:, None]], axis=1)


def compose_affine(second, first) -> np.ndarray:
    """Affine applying ``first`` then ``second``."""
    return (to_3x3(second) @ to_3x3(first))[:2]


def transform_points(points, m) -> np.ndarray:
    """Apply a (2, 3) affine to (..., 2) points (float64 result)."""
    p = _pts(points)
    m = _mat(m)
    return p @ m[:, :2].T + m[:, 2]


def warp_image(image: np.ndarray, m, size, interpolation: int = cv2.INTER_LINEAR,
               border_value=0) -> np.ndarray:
    """Warp the source ``image`` into the ``size`` model input with the affine ``m``."""
    h, w = _hw(size)
    ch = 1 if image.ndim == 2 else image.shape[2]
    return cv2.warpAffine(image, _to_cv(m), (w, h), flags=interpolation,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=_border(border_value, ch))


def unwarp_labels(label_map: np.ndarray, m, out_hw) -> np.ndarray:
    """Model-input label map -> original image (nearest); pixels that fall outside the warped
    region get 0 (background). ``m`` is the original -> model-input affine."""
    h, w = _hw(out_hw)
    lab = np.asarray(label_map)
    if lab.ndim != 2:
        raise ValueError(f"label_map must be (H, W), got {lab.shape}")
    out = cv2.warpAffine(_label_src(lab), _to_cv(m), (w, h),
                         flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(lab.dtype, copy=False)


def unwarp_scores(scores: np.ndarray, m, out_hw, fill: float = 0.0) -> np.ndarray:
    """(C, H, W) model-input scores/logits -> (C, out_h, out_w) in the original image, bilinear per
    channel. Outside the warped region every channel is ``fill`` (0, as facer's
    ``grid_sample(padding_mode='zeros')``), so an argmax there ties and returns class 0
    (background). Unwarp logits, then argmax."""
    h, w = _hw(out_hw)
    coords = transform_points(_pixel_centres(h, w), m)
    return _remap_chw(scores, coords, fill)


# ----------------------------------------------------------------------------- tanh warp
def tanh_forward(c, factor: float) -> np.ndarray:
    """Per-axis tanh warp of normalised aligned coordinates (see module docstring)."""
    c = np.asarray(c, dtype=np.float64)
    f = float(factor)
    if f <= 0:
        return c.copy()
    if f > 1:
        raise ValueError(f"warp factor must be in [0, 1], got {f}")
    a = np.abs(c)
    out = np.where(a > 1 - f, np.sign(c) * (f * np.tanh((a - (1 - f)) / f) + (1 - f)), c)
    return out


def tanh_inverse(v, factor: float, clamp: float = _ATANH_CLAMP) -> np.ndarray:
    """Exact inverse of :func:`tanh_forward` (atanh argument clamped at ``clamp``, below 1)."""
    v = np.asarray(v, dtype=np.float64)
    f = float(factor)
    if f <= 0:
        return v.copy()
    if f > 1:
        raise ValueError(f"warp factor must be in [0, 1], got {f}")
    a = np.abs(v)
    arg = np.clip((a - (1 - f)) / f, 0.0, clamp)
    return np.where(a > 1 - f, np.sign(v) * (f * np.arctanh(arg) + (1 - f)), v)


def _tanh_grid(farl_grid: bool) -> tuple[float, float]:
    """(origin shift, atanh clamp) of the tanh warp. FaRL normalises pixel-*index* coordinates
    (x / w · 2 - 1, centres at integers) and clamps atanh at 0.999; the project's own convention
    normalises continuous coordinates (centres at i + ½) and clamps just below 1."""
    return (0.5, 0.999) if farl_grid else (0.0, _ATANH_CLAMP)


def tanh_warp_points(points, m, size, factor: float = 0.8, farl_grid: bool = False) -> np.ndarray:
    """Original-image points -> tanh-warped model-input coordinates."""
    h, w = _hw(size)
    wh = np.array([w, h], dtype=np.float64)
    shift, _ = _tanh_grid(farl_grid)
    q = transform_points(points, m) - shift
    return (tanh_forward(q / wh * 2 - 1, factor) + 1) / 2 * wh + shift


def tanh_unwarp_points(points, m, size, factor: float = 0.8, farl_grid: bool = False) -> np.ndarray:
    """Tanh-warped model-input points -> original-image coordinates (exact inverse)."""
    h, w = _hw(size)
    wh = np.array([w, h], dtype=np.float64)
    shift, clamp = _tanh_grid(farl_grid)
    q = (tanh_inverse((_pts(points) - shift) / wh * 2 - 1, factor, clamp) + 1) / 2 * wh + shift
    return transform_points(q, invert_affine(m))


def tanh_warp_image(image: np.ndarray, m, size, factor: float = 0.8,
                    interpolation: int = cv2.INTER_LINEAR, border_value=0, farl_grid: bool = False) -> np.ndarray:
    """Tanh-warp ``image`` into the ``size`` model input (``m``: original -> aligned crop)."""
    h, w = _hw(size)
    src = tanh_unwarp_points(_pixel_centres(h, w), m, (h, w), factor, farl_grid)
    ch = 1 if image.ndim == 2 else image.shape[2]
    return _remap(image, src, interpolation, _border(border_value, ch))


def tanh_unwarp_labels(label_map: np.ndarray, m, size, factor: float, out_hw, farl_grid: bool = False) -> np.ndarray:
    """Tanh-warped model-input label map -> original image (nearest; 0 outside)."""
    lab = np.asarray(label_map)
    if lab.ndim != 2:
        raise ValueError(f"label_map must be (H, W), got {lab.shape}")
    oh, ow = _hw(out_hw)
    coords = tanh_warp_points(_pixel_centres(oh, ow), m, size, factor, farl_grid)
    return _remap(_label_src(lab), coords, cv2.INTER_NEAREST, 0).astype(lab.dtype, copy=False)


def tanh_unwarp_scores(scores: np.ndarray, m, size, factor: float, out_hw,
                       fill: float = 0.0, farl_grid: bool = False) -> np.ndarray:
    """(C, H, W) tanh-warped scores/logits -> (C, out_h, out_w) original image, bilinear; see
    :func:`unwarp_scores` for ``fill``."""
    oh, ow = _hw(out_hw)
    coords = tanh_warp_points(_pixel_centres(oh, ow), m, size, factor, farl_grid)
    return _remap_chw(scores, coords, fill)
