"""Overlays for pipeline results: coloured masks, landmarks, boxes, FPS / per-stage timings.
Torch-free (OpenCV). Results are in continuous coordinates (pixel i spans [i, i+1)); drawing
rounds ``x - 0.5`` to pixel indices.

    from farl_edge.runtime.draw import draw_result
    shown = draw_result(frame_bgr, result, color="bgr", fps=loop.stats.fps)
"""
from __future__ import annotations

import cv2
import numpy as np

from farl_edge.runtime.frames import check_color, to_rgb_u8
from farl_edge.runtime.pipeline import STAGES, Face, FrameResult

__all__ = ["palette", "draw_result", "draw_mask", "draw_landmarks", "draw_box", "draw_timings", "draw_legend"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 RGB colours, label 0 (background) black; distinct, fixed hues for the rest."""
    out = np.zeros((max(n, 1), 3), np.uint8)
    for i in range(1, n):
        hue = (i * 0.61803398875) % 1.0
        hsv = np.uint8([[[int(hue * 179), 200 if i % 2 else 255, 255 if i % 3 else 200]]])
        out[i] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return out


def _px(points) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    p = np.nan_to_num(p, nan=-1e6, posinf=1e6, neginf=-1e6)
    return np.clip(np.round(p - 0.5), -1e6, 1e6).astype(np.int64)


def _col(rgb, is_bgr: bool) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rgb)
    return (b, g, r) if is_bgr else (r, g, b)


def draw_mask(image: np.ndarray, face: Face, colors_rgb: np.ndarray, alpha: float = 0.5, is_bgr: bool = True) -> None:
    """Blend the face's label map (its region only) into ``image`` in place; background untouched."""
    lab = face.label_map
    if lab is None or lab.size == 0:
        return
    x0, y0 = face.label_origin
    h, w = image.shape[:2]
    lab = lab[:max(0, h - y0), :max(0, w - x0)]
    region = image[y0:y0 + lab.shape[0], x0:x0 + lab.shape[1]]
    cols = colors_rgb[:, ::-1] if is_bgr else colors_rgb
    lut = cols[np.minimum(lab, len(cols) - 1)]
    fg = lab > 0
    blended = cv2.addWeighted(region, 1 - alpha, lut, alpha, 0)
    np.copyto(region, blended, where=fg[:, :, None])


def draw_landmarks(image: np.ndarray, points, color=(0, 255, 0), radius: int | None = None) -> None:
    pts = _px(points).reshape(-1, 2)
    if radius is None:
        span = np.ptp(pts, axis=0).max() if len(pts) > 1 else 0
        radius = int(np.clip(span / 120, 1, 4))
    for x, y in pts:
        if -radius <= x < image.shape[1] + radius and -radius <= y < image.shape[0] + radius:
            cv2.circle(image, (int(x), int(y)), radius, color, -1, lineType=cv2.LINE_AA)


def draw_box(image: np.ndarray, box, color=(255, 200, 0), text: str | None = None, thickness: int = 2) -> None:
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in np.clip(_px(np.asarray(box).reshape(2, 2)).reshape(4), -w, 2 * w))
    cv2.rectangle(image, (x0, y0), (x1, y1), color, thickness, lineType=cv2.LINE_AA)
    if text:
        cv2.putText(image, text, (max(x0, 0), max(y0 - 4, 12)), _FONT, 0.45, color, 1, cv2.LINE_AA)


def _text_block(image: np.ndarray, lines: list[str], origin=(6, 6), scale: float = 0.45) -> None:
    if not lines:
        return
    sizes = [cv2.getTextSize(t, _FONT, scale, 1)[0] for t in lines]
    lh = max(s[1] for s in sizes) + 6
    w = max(s[0] for s in sizes) + 10
    x, y = origin
    overlay = image[y:y + lh * len(lines) + 4, x:x + w]
    overlay[:] = (overlay.astype(np.uint16) // 3).astype(np.uint8)  # darken for legibility
    for i, t in enumerate(lines):
        cv2.putText(image, t, (x + 5, y + lh * (i + 1) - 3), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


def draw_timings(image: np.ndarray, timings: dict, fps: float | None = None, extra: str | None = None) -> None:
    """FPS and per-stage milliseconds, top left."""
    lines = []
    if fps:
        lines.append(f"{fps:5.1f} FPS")
    stages = [f"{s} {timings.get(s, 0.0):.1f}" for s in STAGES if s in timings]
    if stages:
        lines.append(" | ".join(stages[:2]))
        lines.append(" | ".join(stages[2:]))
    if "total" in timings:
        lines.append(f"total {timings['total']:.1f} ms")
    if extra:
        lines.append(extra)
    _text_block(image, [ln for ln in lines if ln])


def draw_legend(image: np.ndarray, labels: list[str], colors_rgb: np.ndarray, is_bgr: bool = True,
                present: set[int] | None = None) -> None:
    """Label names with their colours, top right (only ``present`` ids when given)."""
    ids = [i for i in range(1, len(labels)) if present is None or i in present]
    y = 8
    for i in ids:
        (tw, th), _ = cv2.getTextSize(labels[i], _FONT, 0.4, 1)
        x = image.shape[1] - tw - 24
        if x < 0 or y + th > image.shape[0]:
            break
        cv2.rectangle(image, (x - 14, y), (x - 4, y + 10), _col(colors_rgb[i], is_bgr), -1)
        cv2.putText(image, labels[i], (x, y + 9), _FONT, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        y += 14


def draw_result(image, result: FrameResult, color: str = "bgr", *, alpha: float = 0.5, masks: bool = True,
                landmarks: bool = True, boxes: bool = True, timings: bool = True, legend: bool = True,
                fps: float | None = None, extra: str | None = None) -> np.ndarray | None:
    """A copy of ``image`` (uint8, 3 channels, in ``color`` order) with the result drawn on it.
    Gray / RGBA / 16-bit frames are converted first; ``None`` / empty frames give ``None``."""
    color = check_color(color)
    rgb = to_rgb_u8(image, color)
    if rgb is None:
        return None
    is_bgr = color == "bgr"
    canvas = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if is_bgr else rgb.copy()
    cols = palette(len(result.labels or []))
    present: set[int] = set()
    for face in result.faces:
        if masks and face.label_map is not None:
            draw_mask(canvas, face, cols, alpha, is_bgr)
            if legend:
                present.update(int(v) for v in np.unique(face.label_map))
        if boxes:
            tag = f"{face.score:.2f}" + (f" #{face.track_id}" if face.track_id is not None else "")
            draw_box(canvas, face.box, _col((0, 200, 255), is_bgr), tag, thickness=1 if face.landmarks is not None else 2)
        if landmarks and face.landmarks is not None:
            draw_landmarks(canvas, face.landmarks, _col((0, 255, 0), is_bgr))
        elif landmarks and face.five_points is not None and face.label_map is None:
            draw_landmarks(canvas, face.five_points, _col((255, 0, 255), is_bgr))
    if legend and result.labels and present:
        draw_legend(canvas, result.labels, cols, is_bgr, present)
    if timings:
        draw_timings(canvas, result.timings, fps, extra)
    return canvas
