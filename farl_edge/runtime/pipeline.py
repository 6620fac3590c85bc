"""Face pipeline for camera apps: frame → faces → crops → one batched inference → results in frame
coordinates. Torch-free (numpy, OpenCV, the runtime backend).

    from farl_edge.runtime.pipeline import FacePipeline
    pipe = FacePipeline("artifacts/farl-small-300w-onnx-fp32")      # an exported artifact folder
    result = pipe(frame_bgr, color="bgr")                           # or color="rgb"
    for face in result.faces:
        face.box, face.score, face.five_points, face.landmarks     # (4,), float, (5, 2), (K, 2)
        face.label_map, face.label_origin                           # parsing: (h, w) uint8 + its (x0, y0)

Stages (their times are in ``result.timings``, milliseconds):

1. **detect** — the built-in BlazeFace detector (:mod:`farl_edge.runtime.detector`), or the app's
   own detections: ``pipe(frame, boxes=...)`` and/or ``pipe(frame, five_points=...)`` (phones
   have platform face detectors). App boxes are taken as tight face boxes (brows to chin, like
   the box of the 68 landmarks); parsing models need 5 points, which are then found by running
   the detector inside the box, or, failing that, placed at their average position in the box.
2. **preprocess** — the crop matrix comes from :func:`farl_edge.crops.crop_matrix` with the
   model's manifest ``preprocess`` (``box`` crops for alignment models around the detector box
   mapped to a landmark-style box; ``similarity`` / ``tanh`` for parsing models from the 5
   points) and the crop from :func:`farl_edge.crops.warp_input`: the same code evaluation uses,
   so the runtime sees the pixels the model was validated on. One exception, off with
   ``antialias=False``: when a crop shrinks the face more than 2× (large faces in 4K / 8K frames)
   the frame is first area-downscaled by an integer factor and the matrix composed with it, which
   avoids aliasing; the geometry is unchanged.
3. **infer** — all faces of the frame in one batch (``batch_size`` caps it).
4. **postprocess** — :func:`farl_edge.crops.landmarks_to_image` and
   :func:`farl_edge.crops.logits_to_label_map` back to frame coordinates. Label maps cover a
   region of interest (``label_origin`` + shape) instead of the whole frame, to keep 4K frames
   cheap: for ``box`` and ``similarity`` crops it is the crop's footprint (exactly the full-frame
   map, which is background outside it); for ``tanh`` crops, which see the whole frame squeezed
   into their border, it is the aligned square enlarged ``label_roi`` times (default 2; ``None``
   = the whole frame, as evaluation does). ``face.label_map_full(hw)`` /
   ``result.merged_label_map()`` paste them into frame-sized maps. A region larger than
   ``max_label_pixels`` (4 MP; huge faces in 4K / 8K frames) is labelled at an integer fraction of
   the frame's resolution and enlarged (nearest): class scores of all classes at full 8K
   resolution would take gigabytes.

Bad input does not crash it: ``None`` / empty frames give an empty result; gray, RGBA, 16-bit
and float frames are converted (:mod:`farl_edge.runtime.frames`); a frame that is not an image
raises :class:`~farl_edge.runtime.frames.FrameError` (a ``ValueError``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from farl_edge import crops, geometry
from farl_edge.errors import UserError
from farl_edge.runtime.detector import Detection, FaceDetector, box_from_five_points, five_points_in_box
from farl_edge.runtime.frames import FrameError, check_color, to_rgb_u8

__all__ = ["Face", "FrameResult", "FacePipeline", "STAGES", "FrameError"]

STAGES = ("detect", "preprocess", "infer", "postprocess")


@dataclass
class Face:
    """One face, everything in frame coordinates (continuous pixels: pixel i spans [i, i+1))."""

    box: np.ndarray  # (4,) x0, y0, x1, y1 (detector / app box)
    score: float
    five_points: np.ndarray | None = None  # (5, 2) eye centres, nose tip, mouth corners (image left first)
    keypoints: np.ndarray | None = None  # (6, 2) BlazeFace keypoints when the built-in detector found it
    crop_box: np.ndarray | None = None  # (4,) the landmark-style box box-crops are made around
    matrix: np.ndarray | None = None  # (2, 3) frame → model input (crops.crop_matrix)
    landmarks: np.ndarray | None = None  # (K, 2) alignment models
    label_map: np.ndarray | None = None  # (h, w) uint8 class ids, parsing models (region label_origin)
    label_origin: tuple[int, int] = (0, 0)  # (x0, y0) of label_map in the frame
    embedding: np.ndarray | None = None  # (D,) backbone models
    track_id: int | None = None  # set by the video loop's smoother
    source: str = "blazeface"  # "blazeface", "app", "frame"

    def label_map_full(self, frame_hw) -> np.ndarray | None:
        """This face's label map pasted into a frame-sized (H, W) uint8 map (0 elsewhere)."""
        if self.label_map is None:
            return None
        h, w = int(frame_hw[0]), int(frame_hw[1])
        out = np.zeros((h, w), np.uint8)
        x0, y0 = self.label_origin
        lh, lw = self.label_map.shape
        out[y0:y0 + lh, x0:x0 + lw] = self.label_map[:max(0, h - y0), :max(0, w - x0)]
        return out


@dataclass
class FrameResult:
    faces: list[Face]
    frame_hw: tuple[int, int] | None  # None: the frame was empty
    task: str
    labels: list[str] | None = None  # parsing: class names, index = label id
    timings: dict = field(default_factory=dict)  # stage → milliseconds (+ "total")
    index: int | None = None  # frame number (video loop)
    timestamp: float | None = None  # capture time, seconds (video loop)
    error: str | None = None  # the video loop's note when a frame could not be used

    @property
    def empty(self) -> bool:
        return not self.faces

    @classmethod
    def no_faces(cls, task: str, labels: list[str] | None, *, preprocess_ms: float = 0.0,
                 frame_hw: tuple[int, int] | None = None, error: str | None = None) -> FrameResult:
        """A result with no faces (empty or unusable frame): every stage 0 ms but ``preprocess``."""
        timings = {**{s: 0.0 for s in STAGES}, "preprocess": preprocess_ms, "total": preprocess_ms}
        return cls(faces=[], frame_hw=frame_hw, task=task, labels=labels, timings=timings, error=error)

    def merged_label_map(self) -> np.ndarray | None:
        """All faces' labels in one (H, W) map; where faces overlap, the higher score wins (among
        non-background labels)."""
        if self.frame_hw is None or self.task != "parsing":
            return None
        h, w = self.frame_hw
        out = np.zeros((h, w), np.uint8)
        for face in sorted(self.faces, key=lambda f: f.score):
            if face.label_map is None or face.label_map.size == 0:
                continue
            x0, y0 = face.label_origin
            lab = face.label_map
            region = out[y0:y0 + lab.shape[0], x0:x0 + lab.shape[1]]
            lab = lab[:region.shape[0], :region.shape[1]]
            np.copyto(region, lab, where=lab > 0)
        return out

    def to_dict(self) -> dict:
        """JSON-friendly summary (no label maps)."""
        faces = []
        for f in self.faces:
            d = {"box": f.box.tolist(), "score": f.score}
            if f.five_points is not None:
                d["five_points"] = f.five_points.tolist()
            if f.landmarks is not None:
                d["landmarks"] = f.landmarks.tolist()
            if f.label_map is not None:
                d["label_region"] = [*f.label_origin, f.label_map.shape[1], f.label_map.shape[0]]
            if f.track_id is not None:
                d["track_id"] = f.track_id
            faces.append(d)
        out = {"index": self.index, "frame_hw": self.frame_hw, "task": self.task, "faces": faces,
               "timings_ms": {k: round(v, 3) for k, v in self.timings.items()}}
        if self.error:
            out["error"] = self.error
        return out


def _as_rows(values, width: int, what: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if width == 4:
        a = a.reshape(-1, 4) if a.ndim == 1 and a.size == 4 else a
        if a.ndim != 2 or a.shape[1] != 4:
            raise UserError(f"{what} must be (N, 4) x0, y0, x1, y1; got shape {a.shape}")
    else:
        a = a[None] if a.shape == (5, 2) else a
        if a.ndim != 3 or a.shape[1:] != (5, 2):
            raise UserError(f"{what} must be (N, 5, 2) (eye centres, nose tip, mouth corners); got shape {a.shape}")
    return a


class FacePipeline:
    """Detector + exported model → :class:`FrameResult` per frame (see the module doc).

    ``model``: an artifact folder (opened with :func:`farl_edge.runtime.load`), an opened
    :class:`~farl_edge.runtime.Session`, or any predictor with ``config`` (e.g. the PyTorch one).
    ``detector``: ``"blazeface"`` (built in), a :class:`FaceDetector`, or ``None`` (the app passes
    detections with every frame).
    """

    def __init__(self, model, detector="blazeface", *, max_faces: int | None = 16, min_score: float | None = None,
                 batch_size: int | None = None, label_roi: float | None = 2.0, antialias: bool = True,
                 threads: int | None = None, backend: str | None = None, detector_threads: int = 1,
                 max_label_pixels: int | None = 4_000_000):
        if isinstance(model, (str, Path)):
            from farl_edge.runtime import load

            model = load(model, backend=backend, threads=threads)
        if not hasattr(model, "config") or not callable(model):
            raise TypeError(f"model must be an artifact folder or a predictor with .config, not {type(model).__name__}")
        self.model = model
        self.config = model.config
        if detector == "blazeface":
            detector = FaceDetector(threads=detector_threads, min_score=min_score, max_faces=max_faces)
        elif detector is not None and not isinstance(detector, FaceDetector):
            raise TypeError("detector must be 'blazeface', a FaceDetector or None")
        self.detector = detector
        self.max_faces = max_faces
        self.batch_size = batch_size
        self.label_roi = label_roi
        self.antialias = antialias
        self.max_label_pixels = max_label_pixels
        self.preprocess = dict(self.config.preprocess or {})
        self.warp = self.preprocess.get("warp", "box")
        self.size = int(self.config.crop_size)  # the crop, which is also the tensor the model takes

    def __repr__(self) -> str:
        return f"FacePipeline({self.config.name}, {self.config.task}, warp={self.warp}, detector={self.detector})"

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def labels(self) -> list[str] | None:
        return list(self.config.labels) if self.config.labels else None

    # --------------------------------------------------------------------------- stages
    def prepare(self, frame, color: str = "bgr") -> np.ndarray | None:
        """Frame → contiguous uint8 RGB (None for an empty frame)."""
        return to_rgb_u8(frame, color)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        if self.warp == "full":
            h, w = rgb.shape[:2]
            box = np.array([0.0, 0.0, w, h])
            return [Detection(box=box, score=1.0, face_box=box, source="frame")]
        if self.detector is None:
            raise UserError("this pipeline has no face detector: pass boxes= or five_points= with each frame")
        return self.detector.detect(rgb, color="rgb")[:self.max_faces or None]

    def detections_from_app(self, rgb: np.ndarray | None, boxes=None, five_points=None, scores=None) -> list[Detection]:
        """The app's own face boxes (N, 4) and/or 5 points (N, 5, 2) → detections. Rows with
        non-finite values or empty boxes are skipped; wrong shapes raise ValueError."""
        b = _as_rows(boxes, 4, "boxes") if boxes is not None else None
        p = _as_rows(five_points, 5, "five_points") if five_points is not None else None
        n = len(b) if b is not None else len(p)
        if b is not None and p is not None and len(b) != len(p):
            raise UserError(f"{len(b)} boxes but {len(p)} sets of five_points")
        s = np.ones(n) if scores is None else np.asarray(scores, np.float64).reshape(-1)
        if len(s) != n:
            raise UserError(f"{n} faces but {len(s)} scores")
        cal = self.detector.calibration if self.detector is not None else None
        out = []
        for i in range(n):
            box = b[i] if b is not None else None
            pts = p[i] if p is not None else None
            if box is not None and (not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]):
                continue
            if pts is not None and (not np.isfinite(pts).all() or np.ptp(pts, axis=0).max() <= 0):
                continue
            kps = None
            if pts is None and self.warp in ("similarity", "tanh", "ffhq") and rgb is not None:
                found = self.detector.detect_in_box(rgb, box) if self.detector is not None else None
                if found is not None:
                    pts, kps = found.five_points, found.keypoints
                else:
                    pts = five_points_in_box(box, cal)
            crop_box = box if box is not None else box_from_five_points(pts, cal)
            out.append(Detection(box=np.asarray(box if box is not None else crop_box, np.float64), score=float(s[i]),
                                 keypoints=kps, five_points=pts, face_box=crop_box, source="app"))
        return out[:self.max_faces or None]

    def crop_matrix(self, det: Detection, frame_hw) -> np.ndarray:
        if self.warp == "full":
            return crops.crop_matrix(self.preprocess, self.size, image_hw=tuple(frame_hw))
        if self.warp == "box" or det.five_points is None:
            box = det.face_box if det.face_box is not None else det.box
            return crops.crop_matrix(self.preprocess, self.size, box=box)
        return crops.crop_matrix(self.preprocess, self.size, five_points=det.five_points)

    def _warp(self, rgb: np.ndarray, m: np.ndarray, cache: dict) -> np.ndarray:
        """One face's crop; ``cache`` keeps this frame's shrunk copies and warp sources (float under
        the farl protocol) so that several faces convert the frame once."""
        def source(k: int) -> np.ndarray:
            if k not in cache:
                img = rgb
                if k > 1:
                    h, w = rgb.shape[:2]
                    img = cv2.resize(rgb, (max(1, w // k), max(1, h // k)), interpolation=cv2.INTER_AREA)
                cache[k] = crops.warp_source(img, self.preprocess)
            return cache[k]

        scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
        if self.antialias and scale < 0.5:
            small = source(int(1.0 / scale))
            to_frame = np.array([[rgb.shape[1] / small.shape[1], 0, 0], [0, rgb.shape[0] / small.shape[0], 0]])
            return crops.warp_input(small, geometry.compose_affine(m, to_frame), self.size, self.preprocess)
        return crops.warp_input(source(1), m, self.size, self.preprocess)

    def _label_region(self, m: np.ndarray, frame_hw) -> tuple[int, int, int, int] | None:
        h, w = frame_hw
        if self.label_roi is None or self.warp == "full":
            return 0, 0, w, h
        r = float(self.label_roi) if self.warp == "tanh" else 1.0
        # + 1 input pixel: bilinear unwarping still reaches half a pixel beyond the input's edge
        c, half = self.size / 2, self.size / 2 * r + 1.0
        corners = np.array([[c - half, c - half], [c + half, c - half], [c + half, c + half], [c - half, c + half]])
        pts = geometry.transform_points(corners, geometry.invert_affine(m))
        x0, y0 = max(0, int(np.floor(pts[:, 0].min()))), max(0, int(np.floor(pts[:, 1].min())))
        x1, y1 = min(w, int(np.ceil(pts[:, 0].max()))), min(h, int(np.ceil(pts[:, 1].max())))
        if x1 <= x0 or y1 <= y0:
            return None
        return x0, y0, x1, y1

    def infer(self, crops_batch: np.ndarray) -> dict[str, np.ndarray]:
        """(B, S, S, 3) crops (uint8, or float32 under the farl protocol) → model outputs (in chunks of ``batch_size``)."""
        n = len(crops_batch)
        step = self.batch_size or n
        parts: dict[str, list] = {}
        for i in range(0, n, step):
            for k, v in self.model(crops.to_tensor_layout(crops_batch[i:i + step])).items():
                parts.setdefault(k, []).append(np.asarray(v))
        return {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in parts.items()}

    def process(self, rgb: np.ndarray, detections: list[Detection], timings: dict | None = None) -> FrameResult:
        """Crop, infer and map back the given detections of a prepared (uint8 RGB) frame."""
        timings = dict(timings or {})
        t0 = time.perf_counter()
        hw = rgb.shape[:2]
        faces, batch, cache = [], [], {}
        for det in detections:
            try:
                m = self.crop_matrix(det, hw)
            except (ValueError, np.linalg.LinAlgError):
                continue  # degenerate geometry (all points equal, zero-size box)
            if not np.isfinite(m).all() or abs(np.linalg.det(m[:, :2])) < 1e-12:
                continue
            batch.append(self._warp(rgb, m, cache))
            faces.append(Face(box=np.asarray(det.box, np.float64), score=float(det.score), five_points=det.five_points,
                              keypoints=det.keypoints, crop_box=det.face_box, matrix=m, source=det.source,
                              track_id=det.extra.get("track_id")))
        t1 = time.perf_counter()
        timings["preprocess"] = timings.get("preprocess", 0.0) + (t1 - t0) * 1000
        outputs = self.infer(np.stack(batch)) if batch else {}
        t2 = time.perf_counter()
        timings["infer"] = (t2 - t1) * 1000
        for i, face in enumerate(faces):
            if self.task == "alignment":
                face.landmarks = crops.landmarks_to_image(outputs["landmarks"][i], face.matrix, self.size, self.preprocess)
            elif self.task == "parsing":
                region = self._label_region(face.matrix, hw)
                if region is None:
                    face.label_map = np.zeros((0, 0), np.uint8)
                    continue
                x0, y0, x1, y1 = region
                h, w = y1 - y0, x1 - x0
                k = 1
                if self.max_label_pixels and h * w > self.max_label_pixels:
                    k = int(math.ceil(math.sqrt(h * w / self.max_label_pixels)))
                # label-map pixel (x, y) → frame (k·x + x0, k·y + y0) → model input
                m_roi = geometry.compose_affine(face.matrix, np.array([[float(k), 0, x0], [0, float(k), y0]]))
                lab = crops.logits_to_label_map(outputs["logits"][i], m_roi, self.size, self.preprocess,
                                                (-(-h // k), -(-w // k)))
                if k > 1:
                    lab = cv2.resize(lab, (lab.shape[1] * k, lab.shape[0] * k),
                                     interpolation=cv2.INTER_NEAREST_EXACT)[:h, :w]
                face.label_map = lab
                face.label_origin = (x0, y0)
            else:
                face.embedding = next(iter(outputs.values()))[i]
        timings["postprocess"] = (time.perf_counter() - t2) * 1000
        timings.setdefault("detect", 0.0)
        timings["total"] = sum(timings[s] for s in STAGES)
        return FrameResult(faces=faces, frame_hw=(int(hw[0]), int(hw[1])), task=self.task, labels=self.labels,
                           timings=timings)

    # --------------------------------------------------------------------------- all in one
    def __call__(self, frame, color: str = "bgr", *, boxes=None, five_points=None, scores=None) -> FrameResult:
        """One frame → results. ``boxes`` / ``five_points``: the app's own detections (skip the
        built-in detector)."""
        check_color(color)
        t0 = time.perf_counter()
        rgb = self.prepare(frame, color)
        t1 = time.perf_counter()
        if rgb is None:
            return FrameResult.no_faces(self.task, self.labels, preprocess_ms=(t1 - t0) * 1000)
        if boxes is not None or five_points is not None:
            dets = self.detections_from_app(rgb, boxes, five_points, scores)
        else:
            dets = self.detect(rgb)
        t2 = time.perf_counter()
        return self.process(rgb, dets, {"preprocess": (t1 - t0) * 1000, "detect": (t2 - t1) * 1000})
