"""Capture loop for cameras and videos: a reader thread, a bounded queue, per-stage timings,
optional landmark smoothing. Torch-free.

    from farl_edge.runtime.pipeline import FacePipeline
    from farl_edge.runtime.video import CaptureLoop

    with CaptureLoop(FacePipeline(artifact), source=0, smoothing="one_euro") as loop:
        for frame, result in loop:          # frame: what the source gave (BGR for OpenCV sources)
            ...                              # result: FrameResult, result.index = frame number
            print(loop.stats.fps, loop.stats.stage_ms)

The reader thread grabs frames as fast as the source gives them into a queue of ``queue_size``
(default 2). For **live** sources (cameras; ``drop_stale=True``) a full queue drops its *oldest*
frame, so processing always works on the newest frame and never lags behind the camera; dropped
frames are counted (``stats.dropped``). For **files** (``drop_stale=False``, the default for
paths and iterables) the reader waits instead, so every frame is processed. Every frame taken
from the queue gives exactly one result, in capture order.

Smoothing (``smoothing="one_euro"`` or ``"ema"``, or a :class:`FaceSmoother`): faces are matched
to tracks across frames by box IoU; each track filters its detection (box and 5 points, which
steadies the crops) and the model's landmarks, in units of the face's size so the parameters do
not depend on resolution. Tracks unseen for ``max_missing`` frames are dropped, so memory stays
flat however long the loop runs.

Frames the pipeline cannot use never stop the loop: empty / ``None`` frames and frames that are
not images give an empty result whose ``error`` says why.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from farl_edge.errors import UserError
from farl_edge.runtime.detector import Detection, box_iou
from farl_edge.runtime.frames import FrameError
from farl_edge.runtime.pipeline import STAGES, FacePipeline, FrameResult

__all__ = ["CaptureLoop", "FrameReader", "Frame", "LoopStats", "OneEuroFilter", "EmaFilter", "FaceSmoother",
           "open_source"]

_END = object()


@dataclass
class Frame:
    index: int
    timestamp: float  # seconds: position in a video file, else capture time (monotonic)
    image: np.ndarray | None


# ----------------------------------------------------------------------------- sources
class _CvSource:
    """cv2.VideoCapture as an iterator of (image, timestamp)."""

    def __init__(self, spec, live: bool):
        import cv2

        self.cap = cv2.VideoCapture(spec)
        if not self.cap.isOpened():
            raise FileNotFoundError(f"cannot open video source {spec!r}" +
                                    (" (no such camera?)" if live else ""))
        self.live = live
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frame_count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not live else 0
        self._n = 0

    def __iter__(self):
        import cv2

        while True:
            ok, img = self.cap.read()
            if not ok:
                return
            if self.live or self.fps <= 0:
                ts = time.monotonic()
            else:
                ts = self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 or self._n / self.fps
            self._n += 1
            yield img, ts

    def close(self):
        self.cap.release()


class _IterSource:
    def __init__(self, frames: Iterable, fps: float | None = None):
        self.frames = frames
        self.live = False
        self.fps = float(fps or 0.0)
        self.frame_count = len(frames) if hasattr(frames, "__len__") else 0

    def __iter__(self):
        for i, img in enumerate(self.frames):
            yield img, (i / self.fps if self.fps else time.monotonic())

    def close(self):
        close = getattr(self.frames, "close", None)
        if callable(close):
            close()


def open_source(source, fps: float | None = None):
    """A camera index (int or digit string), a video file / stream URL, or an iterable of frames."""
    if isinstance(source, (int, np.integer)) or (isinstance(source, str) and source.isdigit()):
        return _CvSource(int(source), live=True)
    if isinstance(source, (str, Path)):
        text = str(source)
        if "://" not in text and not Path(text).is_file():
            raise FileNotFoundError(f"video source {text} does not exist")
        return _CvSource(text, live="://" in text)
    if isinstance(source, Iterable):
        return _IterSource(source, fps)
    raise TypeError(f"source must be a camera index, a video path or an iterable of frames, not "
                    f"{type(source).__name__}")


class FrameReader(threading.Thread):
    """Reads frames into a bounded queue; with ``drop_stale`` a full queue drops its oldest frame."""

    def __init__(self, source, queue_size: int = 2, drop_stale: bool = False, max_frames: int | None = None):
        super().__init__(name="farl-edge-frame-reader", daemon=True)
        if queue_size < 1:
            raise UserError("queue_size must be >= 1")
        self.source = source
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.drop_stale = drop_stale
        self.max_frames = max_frames
        self.read = 0
        self.dropped = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    @property
    def stopped(self) -> bool:
        return self._halt.is_set()

    def _put(self, item) -> bool:
        while not self._halt.is_set():
            if self.drop_stale and item is not _END:
                try:
                    self.queue.put_nowait(item)
                    return True
                except queue.Full:
                    try:
                        self.queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass
                    continue
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            for img, ts in self.source:
                if self._halt.is_set():
                    break
                if not self._put(Frame(self.read, ts, img)):
                    break
                self.read += 1
                if self.max_frames and self.read >= self.max_frames:
                    break
        except BaseException as e:  # noqa: BLE001 - reported to the consumer, never lost in the thread
            self.error = e
        finally:
            self._put(_END)

    def frames(self):
        """Consumer side: yields Frames until the source ends or the reader is stopped."""
        while True:
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                if not self.is_alive() and self.queue.empty():
                    return
                continue
            if item is _END:
                return
            yield item


# ----------------------------------------------------------------------------- smoothing
class OneEuroFilter:
    """One-Euro filter (Casiez et al. 2012) over arrays: little lag when moving, steady at rest.
    ``min_cutoff`` Hz; ``beta`` raises the cutoff with speed (value units per second)."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 5.0, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.x = self.dx = self.t = None

    @staticmethod
    def _alpha(dt: float, cutoff):
        tau = 1.0 / (2 * math.pi * np.asarray(cutoff))
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.x is None or self.x.shape != x.shape or t <= self.t:
            if self.x is not None and self.x.shape == x.shape and t <= self.t:
                t = self.t + 1e-3  # repeated timestamp: treat as a tiny step
            else:
                self.x, self.dx, self.t = x.copy(), np.zeros_like(x), t
                return x.copy()
        dt = t - self.t
        a_d = self._alpha(dt, self.d_cutoff)
        dx = (x - self.x) / dt
        self.dx = a_d * dx + (1 - a_d) * self.dx
        a = self._alpha(dt, self.min_cutoff + self.beta * np.abs(self.dx))
        self.x = a * x + (1 - a) * self.x
        self.t = t
        return self.x.copy()


class EmaFilter:
    """Exponential moving average: ``x = alpha·new + (1 − alpha)·x``."""

    def __init__(self, alpha: float = 0.5):
        if not 0 < alpha <= 1:
            raise UserError("alpha must be in (0, 1]")
        self.alpha = float(alpha)
        self.x = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.x is None or self.x.shape != x.shape:
            self.x = x.copy()
        else:
            self.x = self.alpha * x + (1 - self.alpha) * self.x
        return self.x.copy()


@dataclass
class _Track:
    id: int
    box: np.ndarray
    missing: int = 0
    filters: dict = field(default_factory=dict)


class FaceSmoother:
    """Tracks faces across frames by box IoU and filters their geometry (see module doc)."""

    def __init__(self, kind: str = "one_euro", iou_threshold: float = 0.3, max_missing: int = 5, **params):
        if kind not in ("one_euro", "ema"):
            raise UserError(f"smoothing must be 'one_euro' or 'ema', not {kind!r}")
        self.kind, self.iou_threshold, self.max_missing, self.params = kind, iou_threshold, max_missing, params
        self.tracks: list[_Track] = []
        self._next_id = 0

    def _filter(self, track: _Track, key: str, value: np.ndarray, t: float) -> np.ndarray:
        f = track.filters.get(key)
        if f is None:
            f = track.filters[key] = OneEuroFilter(**self.params) if self.kind == "one_euro" else EmaFilter(**self.params)
        x0, y0, x1, y1 = track.box
        scale = max(math.sqrt(max(x1 - x0, 1e-3) * max(y1 - y0, 1e-3)), 1e-3)
        return f(np.asarray(value, np.float64) / scale, t) * scale

    def _match(self, boxes: list[np.ndarray]) -> list[_Track]:
        assigned: list[_Track | None] = [None] * len(boxes)
        free = list(self.tracks)
        if boxes and free:
            ious = np.stack([box_iou(np.asarray(b, np.float64), np.stack([tr.box for tr in free])) for b in boxes])
            while ious.size and ious.max() > self.iou_threshold:
                i, j = np.unravel_index(int(np.argmax(ious)), ious.shape)
                assigned[i] = free[j]
                ious[i, :] = -1
                ious[:, j] = -1
        used = {id(t) for t in assigned if t is not None}
        for tr in self.tracks:
            if id(tr) not in used:
                tr.missing += 1
        self.tracks = [tr for tr in self.tracks if tr.missing <= self.max_missing]
        out = []
        for b, tr in zip(boxes, assigned):
            if tr is None:
                tr = _Track(self._next_id, np.asarray(b, np.float64).copy())
                self._next_id += 1
                self.tracks.append(tr)
            tr.missing = 0
            out.append(tr)
        return out

    def smooth_detections(self, detections: list[Detection], t: float) -> list[Detection]:
        """Match to tracks and filter box / crop box / 5 points; the track id goes to
        ``detection.extra["track_id"]`` (and from there to ``Face.track_id``)."""
        tracks = self._match([d.box for d in detections])
        out = []
        for det, tr in zip(detections, tracks):
            box = self._filter(tr, "box", det.box, t)
            tr.box = box
            face_box = self._filter(tr, "face_box", det.face_box, t) if det.face_box is not None else None
            pts = self._filter(tr, "five_points", det.five_points, t) if det.five_points is not None else None
            out.append(Detection(box=box, score=det.score, keypoints=det.keypoints, five_points=pts,
                                 face_box=face_box, source=det.source, extra={**det.extra, "track_id": tr.id}))
        return out

    def smooth_result(self, result: FrameResult, t: float) -> FrameResult:
        """Filter the landmarks of faces that carry a track id."""
        by_id = {tr.id: tr for tr in self.tracks}
        for face in result.faces:
            tr = by_id.get(face.track_id)
            if tr is not None and face.landmarks is not None:
                face.landmarks = self._filter(tr, "landmarks", face.landmarks, t)
        return result

    def reset(self) -> None:
        self.tracks.clear()


# ----------------------------------------------------------------------------- the loop
@dataclass
class LoopStats:
    read: int = 0  # frames the reader got from the source
    dropped: int = 0  # stale frames dropped (live sources)
    processed: int = 0  # results produced
    errors: int = 0  # frames that gave an error result
    fps: float = 0.0  # results per second (smoothed)
    stage_ms: dict = field(default_factory=lambda: {s: 0.0 for s in (*STAGES, "total")})  # smoothed

    def update(self, timings: dict, interval: float | None, alpha: float = 0.1) -> None:
        for k in self.stage_ms:
            v = float(timings.get(k, 0.0))
            self.stage_ms[k] = v if self.processed <= 1 else (1 - alpha) * self.stage_ms[k] + alpha * v
        if interval and interval > 0:
            inst = 1.0 / interval
            self.fps = inst if self.fps == 0 else (1 - alpha) * self.fps + alpha * inst


class CaptureLoop:
    """Iterate ``(frame, FrameResult)`` over a camera, a video file or any iterable of frames.

    ``color``: the channel order of the source's frames ("bgr" for OpenCV captures).
    ``drop_stale``: None = True for cameras / streams, False for files and iterables.
    ``smoothing``: None, "one_euro", "ema", or a :class:`FaceSmoother`.
    ``detections``: optional callable ``frame -> dict(boxes=..., five_points=...)`` giving the
    app's own detections for each frame (the built-in detector is then skipped).
    """

    def __init__(self, pipeline: FacePipeline, source, *, color: str = "bgr", queue_size: int = 2,
                 drop_stale: bool | None = None, smoothing=None, max_frames: int | None = None,
                 fps: float | None = None, detections=None):
        self.pipeline = pipeline
        self.color = color
        self.source = open_source(source, fps)
        live = self.source.live
        self.drop_stale = live if drop_stale is None else bool(drop_stale)
        if isinstance(smoothing, str):
            smoothing = FaceSmoother(smoothing)
        self.smoother: FaceSmoother | None = smoothing
        self.detections = detections
        self.reader = FrameReader(self.source, queue_size, self.drop_stale, max_frames)
        self.stats = LoopStats()
        self._last = None

    @property
    def frame_count(self) -> int:
        """Frames in a video file (0 when unknown / live)."""
        return self.source.frame_count

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.reader.stop()
        if self.reader.is_alive():
            self.reader.join(timeout=2.0)
        self.source.close()

    def process_frame(self, frame: Frame) -> FrameResult:
        """One frame through the pipeline (with smoothing); never raises for bad frames."""
        p = self.pipeline
        t0 = time.perf_counter()
        try:
            rgb = p.prepare(frame.image, self.color)
        except FrameError as e:
            result = FrameResult.no_faces(p.task, p.labels, error=str(e))
            self.stats.errors += 1
            return result
        t1 = time.perf_counter()
        if rgb is None:
            return FrameResult.no_faces(p.task, p.labels, preprocess_ms=(t1 - t0) * 1000, error="empty frame")
        try:
            if self.detections is not None:
                dets = p.detections_from_app(rgb, **(self.detections(frame.image) or {}))
            else:
                dets = p.detect(rgb)
        except ValueError as e:  # the app's detections had the wrong shape
            self.stats.errors += 1
            return FrameResult.no_faces(p.task, p.labels, frame_hw=rgb.shape[:2], error=str(e))
        if self.smoother is not None:
            dets = self.smoother.smooth_detections(dets, frame.timestamp)
        t2 = time.perf_counter()
        result = p.process(rgb, dets, {"preprocess": (t1 - t0) * 1000, "detect": (t2 - t1) * 1000})
        if self.smoother is not None:
            self.smoother.smooth_result(result, frame.timestamp)
        return result

    def __iter__(self):
        if not self.reader.is_alive() and self.reader.read == 0:
            self.reader.start()
        try:
            for frame in self.reader.frames():
                result = self.process_frame(frame)
                result.index, result.timestamp = frame.index, frame.timestamp
                now = time.perf_counter()
                interval = now - self._last if self._last is not None else None
                self._last = now
                self.stats.processed += 1
                self.stats.read, self.stats.dropped = self.reader.read, self.reader.dropped
                self.stats.update(result.timings, interval)
                yield frame.image, result
            if self.reader.error is not None:
                raise RuntimeError(f"reading frames failed: {self.reader.error}") from self.reader.error
        finally:
            self.stats.read, self.stats.dropped = self.reader.read, self.reader.dropped
            self.close()
