"""Built-in face detector: MediaPipe's BlazeFace short-range on ONNX Runtime (no torch).

The network is MediaPipe's ``face_detection_short_range.tflite`` (Apache-2.0), converted once by
``runtimes/tools/convert_blazeface.py`` to ``farl_edge/data/detector/blazeface_short_range.onnx``
(its LICENSE and NOTICE beside it). The graph includes input normalisation and anchor decoding;
this module does the rest of MediaPipe's face-detection graph:

- **letterbox**: the frame is scaled, keeping its aspect ratio, into the 128×128 input and
  centred with black borders (MediaPipe's ``keep_aspect_ratio``); downscaling uses area
  interpolation. The returned matrix maps frame → input continuous coordinates
  (:mod:`farl_edge.geometry`'s convention), so results map back exactly;
- **weighted NMS** (``min_suppression_threshold`` 0.3, IoU): each kept face is the score-weighted
  mean of the boxes and keypoints it suppresses; score threshold 0.5.

BlazeFace's keypoints are, in its order: right eye, left eye, nose tip, mouth centre, right ear
tragion, left ear tragion — "right" of the *person*, i.e. the eye on the image's left in a frontal
face, which is FaRL's first point (FaRL lists image sides).

From BlazeFace to FaRL's conventions (fitted by ``convert_blazeface.py --calibrate`` on the
300-W training faces; the numbers are in ``blazeface_short_range.json``):

- **5 points** (eye centres, nose tip, mouth corners): BlazeFace has no mouth corners. Each FaRL
  point is a BlazeFace keypoint (eyes → eye centres, nose → nose tip, mouth centre → both
  corners) plus an offset ``a·u + b·n`` in the face's own frame, where ``u`` is the vector from the
  image-left eye to the image-right eye and ``n`` is ``u`` turned 90° towards the chin. The fitted
  mouth corners are ``mouth centre − 0.41·u`` and ``+ 0.45·u`` (slightly above it): the median
  mouth of 300-W's training faces. An approximation: it holds for neutral mouths and degrades
  with wide smiles, open mouths and strong yaw. Measured on the 330 test-helen faces: mean 5-point
  error 0.096 eye distances (eyes 0.06, nose tip 0.085, mouth corners 0.14); the calibrated box
  overlaps the 68-landmark box with IoU 0.87 (the raw detector box: 0.82).
- **alignment crop box**: alignment models were trained on crops around the box of their
  annotated landmarks. The detector's box is mapped to the equivalent landmark box by a fitted
  shift and scale (``box_from_detector``: centre + (gx, gy)·s, size (kw, kh)·s with
  s = sqrt(w·h) of the detector box).
- **app boxes / app points** (phones have platform face detectors): ``points_in_box`` places the
  5 points in a landmark box when nothing better is known, and ``box_in_template`` gives the
  landmark box from 5 points (in FaRL's 512 template frame, mapped back through the similarity).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from farl_edge import geometry

__all__ = ["Detection", "FaceDetector", "DEFAULT_META", "KEYPOINT_NAMES", "detector_dir", "letterbox",
           "weighted_nms", "box_iou", "five_points_from_keypoints", "face_box_from_detection",
           "five_points_in_box", "box_from_five_points", "fit_calibration"]

DETECTOR_NAME = "blazeface_short_range"
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")

# Options of MediaPipe's face_detection_short_range graph, and calibration defaults (replaced by the
# fitted values stored in blazeface_short_range.json).
DEFAULT_META: dict = {
    "name": DETECTOR_NAME,
    "input_size": 128,
    "input": "RGB float32 NCHW in [0, 1], letterboxed (keep aspect ratio, centred, black border)",
    "outputs": {"scores": "(B, 896) sigmoid", "boxes": "(B, 896, 4) x0 y0 x1 y1, input pixels",
                "keypoints": "(B, 896, 6, 2) x y, input pixels"},
    "keypoints": list(KEYPOINT_NAMES),
    "min_score": 0.5,
    "nms_iou": 0.3,
    "calibration": {
        # (5, 2): offsets (a, b) in units of (u, n) for [left eye, right eye, nose, left/right mouth corner]
        "five_point_offsets": [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [-0.3, 0.0], [0.3, 0.0]],
        "box_from_detector": [0.0, 0.1, 1.1, 1.15],  # gx, gy, kw, kh
        "points_in_box": [[-0.2, -0.15], [0.2, -0.15], [0.0, 0.05], [-0.15, 0.25], [0.15, 0.25]],
        "box_in_template": [130.0, 140.0, 382.0, 460.0],
    },
}


def detector_dir() -> Path:
    return Path(str(resources.files("farl_edge") / "data" / "detector"))


# ----------------------------------------------------------------------------- geometry helpers
def letterbox(rgb: np.ndarray, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Scale ``rgb`` into a ``size``² canvas keeping its aspect ratio, centred, black borders.
    Returns the canvas and the (2, 3) frame → canvas matrix (continuous coordinates)."""
    h, w = rgb.shape[:2]
    s = min(size / w, size / h)
    rw, rh = max(1, min(size, int(round(w * s)))), max(1, min(size, int(round(h * s))))
    interp = cv2.INTER_AREA if (rw < w or rh < h) else cv2.INTER_LINEAR
    small = cv2.resize(rgb, (rw, rh), interpolation=interp)
    if small.ndim == 2:
        small = small[:, :, None]
    ox, oy = (size - rw) // 2, (size - rh) // 2
    canvas = np.zeros((size, size, rgb.shape[2] if rgb.ndim == 3 else 1), dtype=rgb.dtype)
    canvas[oy:oy + rh, ox:ox + rw] = small
    # cv2.resize maps pixel centres ((x + 0.5) * rw / w - 0.5): exact scaling of continuous coordinates
    matrix = np.array([[rw / w, 0.0, ox], [0.0, rh / h, oy]])
    return canvas, matrix


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) box with (N, 4) boxes (x0, y0, x1, y1)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ix0 = np.maximum(box[0], boxes[:, 0])
    iy0 = np.maximum(box[1], boxes[:, 1])
    ix1 = np.minimum(box[2], boxes[:, 2])
    iy1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def weighted_nms(scores: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray, iou_threshold: float = 0.3,
                 min_score: float = 0.5, max_detections: int | None = None):
    """MediaPipe's weighted non-maximum suppression. Returns a list of (score, box (4,), keypoints (K, 2)):
    the best remaining candidate's score, and the score-weighted mean of the boxes / keypoints of
    every candidate overlapping it by more than ``iou_threshold`` (itself included)."""
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.flatnonzero(scores >= min_score)
    order = keep[np.argsort(-scores[keep], kind="stable")]
    boxes = np.asarray(boxes, dtype=np.float64)
    keypoints = np.asarray(keypoints, dtype=np.float64)
    out = []
    while order.size:
        top = order[0]
        ious = box_iou(boxes[top], boxes[order])
        group = order[ious > iou_threshold]
        if top not in group:  # degenerate (zero-area) box: still report it, alone
            group = np.array([top])
        wts = scores[group][:, None]
        box = (boxes[group] * wts).sum(0) / wts.sum()
        kps = (keypoints[group] * wts[:, :, None]).sum(0) / wts.sum()
        out.append((float(scores[top]), box, kps))
        order = order[~np.isin(order, group)]
        if max_detections and len(out) >= max_detections:
            break
    return out


def _face_frame(left_eye: np.ndarray, right_eye: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """u: image-left eye → image-right eye; n: u turned 90° towards the chin (image y grows down)."""
    u = np.asarray(right_eye, np.float64) - np.asarray(left_eye, np.float64)
    n = np.array([-u[1], u[0]])
    return u, n


def five_points_from_keypoints(keypoints6: np.ndarray, calibration: dict | None = None) -> np.ndarray:
    """BlazeFace's 6 keypoints (frame coordinates) → FaRL's 5 points (see module doc)."""
    cal = calibration or DEFAULT_META["calibration"]
    kp = np.asarray(keypoints6, dtype=np.float64)
    base = kp[[0, 1, 2, 3, 3]]
    u, n = _face_frame(kp[0], kp[1])
    off = np.asarray(cal["five_point_offsets"], dtype=np.float64)
    return base + off[:, :1] * u + off[:, 1:] * n


def face_box_from_detection(box: np.ndarray, calibration: dict | None = None) -> np.ndarray:
    """Detector box → the landmark-style box alignment crops are made around."""
    cal = calibration or DEFAULT_META["calibration"]
    gx, gy, kw, kh = cal["box_from_detector"]
    x0, y0, x1, y1 = (float(v) for v in box)
    s = np.sqrt(max(x1 - x0, 1e-6) * max(y1 - y0, 1e-6))
    cx, cy = (x0 + x1) / 2 + gx * s, (y0 + y1) / 2 + gy * s
    return np.array([cx - kw * s / 2, cy - kh * s / 2, cx + kw * s / 2, cy + kh * s / 2])


def five_points_in_box(box: np.ndarray, calibration: dict | None = None) -> np.ndarray:
    """Average placement of the 5 points in a landmark-style box (when only a box is known)."""
    cal = calibration or DEFAULT_META["calibration"]
    x0, y0, x1, y1 = (float(v) for v in box)
    s = np.sqrt(max(x1 - x0, 1e-6) * max(y1 - y0, 1e-6))
    rel = np.asarray(cal["points_in_box"], dtype=np.float64)
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2]) + rel * s


def box_from_five_points(points5: np.ndarray, calibration: dict | None = None) -> np.ndarray:
    """Landmark-style box from 5 points: ``box_in_template`` mapped back through the similarity."""
    cal = calibration or DEFAULT_META["calibration"]
    m = geometry.similarity_from_5pts(points5, 512)
    x0, y0, x1, y1 = cal["box_in_template"]
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    return geometry.box_from_points(geometry.transform_points(corners, geometry.invert_affine(m)))


# ----------------------------------------------------------------------------- results
@dataclass
class Detection:
    """One face in frame coordinates (continuous pixels)."""

    box: np.ndarray  # (4,) x0, y0, x1, y1: the detector's (or the app's) box
    score: float = 1.0
    keypoints: np.ndarray | None = None  # (6, 2) BlazeFace keypoints, KEYPOINT_NAMES order
    five_points: np.ndarray | None = None  # (5, 2) FaRL's points: eye centres, nose tip, mouth corners (image sides)
    face_box: np.ndarray | None = None  # (4,) landmark-style box for alignment crops
    source: str = "blazeface"
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- the detector
class FaceDetector:
    """BlazeFace short-range on ONNX Runtime: ``detect(frame) -> [Detection]``.

    Short-range: made for faces that fill a good part of the frame (selfie / webcam distance,
    roughly faces ≥ 1/8 of the frame's longer side). ``min_score`` (0.5) and ``nms_iou`` (0.3)
    are MediaPipe's.
    """

    def __init__(self, model_path: str | Path | None = None, *, meta: dict | None = None, threads: int | None = 1,
                 min_score: float | None = None, nms_iou: float | None = None, max_faces: int | None = None,
                 providers: list | None = None):
        import onnxruntime as ort

        folder = detector_dir()
        self.model_path = Path(model_path) if model_path else folder / f"{DETECTOR_NAME}.onnx"
        if not self.model_path.is_file():
            raise FileNotFoundError(f"face detector model {self.model_path} is missing (farl_edge/data/detector is "
                                    f"package data; re-install farl-edge or run runtimes/tools/convert_blazeface.py)")
        if meta is None:
            meta_path = self.model_path.with_suffix(".json")
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else DEFAULT_META
        self.meta = meta
        self.calibration = {**DEFAULT_META["calibration"], **meta.get("calibration", {})}
        self.input_size = int(meta.get("input_size", 128))
        self.min_score = float(min_score if min_score is not None else meta.get("min_score", 0.5))
        self.nms_iou = float(nms_iou if nms_iou is not None else meta.get("nms_iou", 0.3))
        self.max_faces = max_faces
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or 1)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.model_path), sess_options=so,
                                            providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __repr__(self) -> str:
        return f"FaceDetector({self.model_path.name}, min_score={self.min_score}, nms_iou={self.nms_iou})"

    def raw(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, 3, 128, 128) float32 [0, 1] → scores, boxes, keypoints (input pixels)."""
        scores, boxes, kps = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})
        return scores, boxes, kps

    def detect(self, frame: np.ndarray, color: str = "rgb", *, min_score: float | None = None) -> list[Detection]:
        """Faces in a frame, best first. ``frame``: anything :func:`~farl_edge.runtime.frames.to_rgb_u8`
        accepts (an empty frame gives no faces)."""
        from farl_edge.runtime.frames import to_rgb_u8

        rgb = to_rgb_u8(frame, color)
        if rgb is None:
            return []
        canvas, matrix = letterbox(rgb, self.input_size)
        return self._detect_canvas(canvas, matrix, min_score)

    def detect_in_box(self, rgb: np.ndarray, box, scale: float = 1.6) -> Detection | None:
        """Run the detector on a square region around ``box`` (an app's face box) and return the
        detection that overlaps it best, or None."""
        x0, y0, x1, y1 = (float(v) for v in box)
        side = max(x1 - x0, y1 - y0) * scale
        if side <= 0:
            return None
        m = geometry.box_matrix(box, self.input_size, scale=scale)
        if side > 2 * self.input_size:  # area-downscale first (anti-aliasing)
            k = int(side // self.input_size)
            h, w = rgb.shape[:2]
            small = cv2.resize(rgb, (max(1, w // k), max(1, h // k)), interpolation=cv2.INTER_AREA)
            s = np.diag([w / small.shape[1], h / small.shape[0]])
            canvas = geometry.warp_image(small, geometry.compose_affine(m, np.concatenate([s, np.zeros((2, 1))], 1)),
                                         self.input_size)
        else:
            canvas = geometry.warp_image(rgb, m, self.input_size)
        dets = self._detect_canvas(canvas, m, None)
        if not dets:
            return None
        ious = box_iou(np.asarray(box, np.float64), np.stack([d.box for d in dets]))
        best = int(np.argmax(ious))
        return dets[best] if ious[best] > 0.1 else None

    def _detect_canvas(self, canvas: np.ndarray, matrix: np.ndarray, min_score: float | None) -> list[Detection]:
        x = canvas.transpose(2, 0, 1)[None].astype(np.float32) * np.float32(1 / 255)
        scores, boxes, kps = self.raw(x)
        kept = weighted_nms(scores[0], boxes[0], kps[0], self.nms_iou,
                            self.min_score if min_score is None else min_score, self.max_faces)
        inv = geometry.invert_affine(matrix)
        out = []
        for score, box, kp in kept:
            corners = geometry.transform_points(box.reshape(2, 2), inv)
            kp_frame = geometry.transform_points(kp, inv)
            fbox = corners.reshape(4)
            out.append(Detection(box=fbox, score=score, keypoints=kp_frame,
                                 five_points=five_points_from_keypoints(kp_frame, self.calibration),
                                 face_box=face_box_from_detection(fbox, self.calibration)))
        return out


# ----------------------------------------------------------------------------- calibration (maintainers)
def fit_calibration(detections: list[Detection], landmarks68: list[np.ndarray]) -> tuple[dict, dict]:
    """Fit the calibration block from detections matched to annotated 68-point faces (continuous
    coordinates). Returns (calibration, report); medians, so a few bad matches do not matter."""
    offsets, boxes, in_box, in_tpl = [], [], [], []
    err_before, err_after, iou_before, iou_after, err_box_pts = [], [], [], [], []
    for det, lm in zip(detections, landmarks68):
        lm = np.asarray(lm, np.float64)
        target = geometry.five_points_from_68(lm)
        kp = det.keypoints
        base = kp[[0, 1, 2, 3, 3]]
        u, n = _face_frame(kp[0], kp[1])
        uu = float(u @ u)
        if uu < 1e-6:
            continue
        d = target - base
        offsets.append(np.stack([d @ u / uu, d @ n / uu], -1))
        lbox = geometry.box_from_points(lm)
        x0, y0, x1, y1 = det.box
        s = np.sqrt((x1 - x0) * (y1 - y0))
        boxes.append([((lbox[0] + lbox[2]) - (x0 + x1)) / 2 / s, ((lbox[1] + lbox[3]) - (y0 + y1)) / 2 / s,
                      (lbox[2] - lbox[0]) / s, (lbox[3] - lbox[1]) / s])
        ls = np.sqrt((lbox[2] - lbox[0]) * (lbox[3] - lbox[1]))
        in_box.append((target - (lbox[:2] + lbox[2:]) / 2) / ls)
        m = geometry.similarity_from_5pts(target, 512)
        in_tpl.append(geometry.box_from_points(geometry.transform_points(
            np.array([[lbox[0], lbox[1]], [lbox[2], lbox[1]], [lbox[2], lbox[3]], [lbox[0], lbox[3]]]), m)))
    cal = {
        "five_point_offsets": np.round(np.median(offsets, 0), 4).tolist(),
        "box_from_detector": np.round(np.median(boxes, 0), 4).tolist(),
        "points_in_box": np.round(np.median(in_box, 0), 4).tolist(),
        "box_in_template": np.round(np.median(in_tpl, 0), 2).tolist(),
    }
    for det, lm in zip(detections, landmarks68):
        target = geometry.five_points_from_68(lm)
        iod = np.linalg.norm(target[1] - target[0])
        err_before.append(np.linalg.norm(five_points_from_keypoints(det.keypoints, DEFAULT_META["calibration"])
                                          - target, axis=1).mean() / iod)
        err_after.append(np.linalg.norm(five_points_from_keypoints(det.keypoints, cal) - target, axis=1).mean() / iod)
        lbox = geometry.box_from_points(lm)
        iou_before.append(float(box_iou(lbox, det.box[None])[0]))
        iou_after.append(float(box_iou(lbox, face_box_from_detection(det.box, cal)[None])[0]))
        err_box_pts.append(np.linalg.norm(five_points_in_box(lbox, cal) - target, axis=1).mean() / iod)
    report = {
        "five_points_error_over_eye_distance": {"uncalibrated": float(np.mean(err_before)),
                                                "calibrated": float(np.mean(err_after))},
        "landmark_box_iou": {"detector_box": float(np.mean(iou_before)), "calibrated": float(np.mean(iou_after))},
        "five_points_from_box_error_over_eye_distance": float(np.mean(err_box_pts)),
    }
    return cal, report
