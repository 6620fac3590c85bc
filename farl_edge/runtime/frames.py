"""Camera frames of any common layout → the uint8 RGB image the runtime works on (no torch).

What is accepted (and how it is read):

| input | result |
| --- | --- |
| ``None``, an empty array, a dimension of 0 | ``None``: an empty result, not an error (cameras drop frames) |
| (H, W) or (H, W, 1) grayscale | replicated to 3 channels |
| (H, W, 3) | BGR or RGB, as the caller says (``color=``) |
| (H, W, 4) | BGRA or RGBA; alpha is dropped |
| uint8 | as is |
| uint16 (16-bit cameras, PNGs) | ``value >> 8`` (full 16-bit range → 8 bits) |
| other integer types | clipped to 0..255 |
| float16/32/64 | read as [0, 1] (×255; NaN → 0); finite values outside [0, 1] are an error (0..255 floats) |

Anything else — another number of dimensions or channels, booleans, complex numbers, objects,
strings — raises :class:`FrameError` (a ``ValueError``) that says what was passed.
"""
from __future__ import annotations

import cv2
import numpy as np

from farl_edge.errors import FarlEdgeError, UserError

__all__ = ["FrameError", "COLORS", "to_rgb_u8", "check_color"]

COLORS = ("bgr", "rgb")


class FrameError(FarlEdgeError, ValueError):
    """The caller passed something that is not an image frame."""


def check_color(color: str) -> str:
    c = str(color).lower()
    if c not in COLORS:
        raise UserError(f"color must be 'bgr' (OpenCV) or 'rgb', not {color!r}")
    return c


def _to_u8(a: np.ndarray) -> np.ndarray:
    kind = a.dtype.kind
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return (a >> 8).astype(np.uint8)
    if kind in "iu":
        return np.clip(a, 0, 255).astype(np.uint8)
    if kind == "f":
        f = np.nan_to_num(a.astype(np.float32, copy=False), nan=0.0, posinf=np.inf, neginf=-np.inf)
        lo, hi = float(f.min()), float(f.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            hint = " (looks like 0..255: pass frame.astype(np.uint8), or divide by 255)" if hi > 2 else ""
            raise FrameError(f"float frame has values in [{lo:.3g}, {hi:.3g}]; float frames must be in [0, 1]{hint}")
        return np.clip(f * 255.0 + 0.5, 0, 255).astype(np.uint8)
    raise FrameError(f"frame dtype {a.dtype} is not an image type (use uint8, uint16 or float in [0, 1])")


def to_rgb_u8(frame, color: str = "bgr") -> np.ndarray | None:
    """A contiguous (H, W, 3) uint8 RGB copy/view of ``frame``, or ``None`` for an empty frame."""
    color = check_color(color)
    if frame is None:
        return None
    if not isinstance(frame, np.ndarray):
        try:
            frame = np.asarray(frame)
        except Exception as e:  # noqa: BLE001 - anything unconvertible is the caller's error
            raise FrameError(f"frame of type {type(frame).__name__} is not an image array ({e})") from None
    if frame.dtype.kind not in "uif":
        raise FrameError(f"frame dtype {frame.dtype} is not an image type (use uint8, uint16 or float in [0, 1])")
    if frame.size == 0:
        return None
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(_to_u8(frame)), cv2.COLOR_GRAY2RGB)
    if frame.ndim != 3:
        raise FrameError(f"frame must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {frame.shape}")
    c = frame.shape[2]
    if c not in (3, 4):
        raise FrameError(f"frame has {c} channels; expected 1 (gray), 3 ({color.upper()}) or 4 "
                         f"({color.upper()}A); shape {frame.shape}")
    u8 = np.ascontiguousarray(_to_u8(frame))
    if c == 4:
        return cv2.cvtColor(u8, cv2.COLOR_BGRA2RGB if color == "bgr" else cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(u8, cv2.COLOR_BGR2RGB) if color == "bgr" else u8
