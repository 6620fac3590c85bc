"""Common sample type and error handling for the data-set readers. Torch-free.

Error policy (all readers): a malformed or incomplete sample is never skipped silently.

* ``strict=True`` (default): the reader scans everything, then raises one :class:`DatasetError`
  that lists every problem with its file path (the first 20 in the message, ``.problems`` holds
  all of them).
* ``strict=False``: the reader returns the good samples as a :class:`Samples` list whose
  ``.problems`` attribute lists ``(path, message)`` for every rejected sample; each problem is
  also logged as a warning on the ``farl_edge.datasets`` logger.

Landmarks are float32 ``(K, 2)`` arrays of ``(x, y)`` in *continuous* pixel coordinates (pixel
``i`` spans ``[i, i + 1)``; see :mod:`farl_edge.geometry`). Boxes are ``(x0, y0, x1, y1)`` in
the same coordinates. Masks are uint8 label maps already in FaRL's class order.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from farl_edge.errors import FarlEdgeError
from farl_edge.utils import IMAGE_SUFFIXES

log = logging.getLogger("farl_edge.datasets")



class DatasetError(FarlEdgeError, ValueError):
    """A data set (or one of its files) is missing, unreadable or malformed.

    ``problems`` is a list of ``(path, message)`` pairs."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


class Samples(list):
    """A list of :class:`FaceSample` plus the ``problems`` found while reading (strict=False)."""

    def __init__(self, items: Iterable["FaceSample"] = (), problems: list[tuple[str, str]] | None = None,
                 source: str = ""):
        super().__init__(items)
        self.problems: list[tuple[str, str]] = list(problems or [])
        self.source = source


def _imread_any(path: Path, flags: int) -> np.ndarray | None:
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # works with non-ASCII paths, unlike imread
    except OSError:
        return None
    if data.size == 0:
        return None
    return cv2.imdecode(data, flags)


@dataclass(eq=False)
class FaceSample:
    """One annotated face.

    image_path: the photo. landmarks: (K, 2) float32 continuous coordinates or None.
    mask_path: index-PNG label map or None. box: (4,) float32 (x0, y0, x1, y1) or None.
    name: unique name within its data set.
    mask_lut: optional lookup table stored-label -> FaRL label (values beyond it are an error).
    mask_parts: for per-part binary masks (official CelebAMask-HQ): ``((farl_label, path), ...)``
        painted in order, later parts over earlier ones.
    mask_hw: mask size when it cannot be read from ``mask_path`` (per-part layout).
    attributes: free-form per-sample metadata (WFLW attributes, AFLW visibility, ...).
    """

    image_path: Path
    landmarks: np.ndarray | None = None
    mask_path: Path | None = None
    box: np.ndarray | None = None
    name: str = ""
    mask_lut: np.ndarray | None = None
    mask_parts: tuple[tuple[int, Path], ...] | None = None
    mask_hw: tuple[int, int] | None = None
    attributes: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        bits = [f"name={self.name!r}", f"image_path={str(self.image_path)!r}"]
        if self.landmarks is not None:
            bits.append(f"landmarks={self.landmarks.shape}")
        if self.box is not None:
            bits.append(f"box={np.round(self.box, 2).tolist()}")
        if self.mask_path is not None:
            bits.append(f"mask_path={str(self.mask_path)!r}")
        if self.mask_parts is not None:
            bits.append(f"mask_parts={len(self.mask_parts)}")
        return f"FaceSample({', '.join(bits)})"

    def load_image(self) -> np.ndarray:
        """RGB uint8 (H, W, 3). Raises DatasetError naming the path when unreadable."""
        img = _imread_any(Path(self.image_path), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"cannot read image {self.image_path}", [(str(self.image_path), "unreadable image")])
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def load_mask(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """uint8 label map in FaRL's class order, at its stored resolution or resized (nearest)
        to ``size`` = (height, width)."""
        if self.mask_parts is not None:
            mask = self._compose_parts()
        elif self.mask_path is not None:
            mask = read_index_png(Path(self.mask_path))
            if self.mask_lut is not None:
                lut = np.asarray(self.mask_lut)
                if mask.size and int(mask.max()) >= len(lut):
                    bad = sorted(int(v) for v in np.unique(mask) if v >= len(lut))
                    raise DatasetError(f"{self.mask_path}: label values {bad} outside 0..{len(lut) - 1}",
                                       [(str(self.mask_path), f"label values {bad} out of range")])
                mask = lut[mask]
        else:
            raise DatasetError(f"sample {self.name!r} has no mask")
        mask = mask.astype(np.uint8, copy=False)
        if size is not None and tuple(mask.shape[:2]) != tuple(size):
            mask = cv2.resize(mask, (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST)
        return mask

    def _compose_parts(self) -> np.ndarray:
        mask = None
        for label, path in self.mask_parts or ():
            part = _imread_any(Path(path), cv2.IMREAD_GRAYSCALE)
            if part is None:
                raise DatasetError(f"cannot read mask part {path}", [(str(path), "unreadable mask part")])
            if mask is None:
                mask = np.zeros(part.shape[:2], np.uint8)
            if part.shape[:2] != mask.shape:
                raise DatasetError(f"mask part {path} is {part.shape[:2]}, other parts {mask.shape}",
                                   [(str(path), "mask part size mismatch")])
            mask[part > 0] = label
        if mask is None:
            if self.mask_hw is None:
                raise DatasetError(f"sample {self.name!r} has no mask parts and no mask size")
            mask = np.zeros(self.mask_hw, np.uint8)
        return mask


def read_index_png(path: Path) -> np.ndarray:
    """Label indices of a palette ('P') or grayscale PNG, read with Pillow (OpenCV would turn a
    palette into colours). Colour images are rejected."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA"):
                raise DatasetError(f"{path}: mask is a {mode} image; expected palette or grayscale label indices",
                                   [(str(path), f"{mode} mask")])
            arr = np.array(im)
    except DatasetError:
        raise
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read mask {path}: {exc}", [(str(path), "unreadable mask")]) from exc
    if arr.ndim != 2:
        raise DatasetError(f"{path}: mask has shape {arr.shape}, expected (H, W)", [(str(path), "bad mask shape")])
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DatasetError(f"{path}: label values outside 0..255", [(str(path), "label values out of range")])
        arr = arr.astype(np.uint8)
    return arr


def find_image(folder: Path, stem: str) -> Path | None:
    """``folder/stem.<ext>`` for the usual image extensions (case-insensitive), or None."""
    for ext in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def finish(samples: list[FaceSample], problems: list[tuple[str, str]], strict: bool,
           source: str) -> Samples:
    """Apply the error policy (see module docstring)."""
    if problems and strict:
        shown = "\n".join(f"  {p}: {m}" for p, m in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DatasetError(f"{source}: {len(problems)} malformed or incomplete sample(s) (to skip and report "
                           f"them: `farl-edge eval --skip-bad`, or strict=False in Python):\n{shown}{more}", problems)
    for p, m in problems:
        log.warning("%s: skipped %s: %s", source, p, m)
    return Samples(samples, problems, source)


def as_f32(values, shape: tuple[int, ...] | None = None) -> np.ndarray:
    a = np.asarray(values, dtype=np.float32)
    if shape is not None:
        a = a.reshape(shape)
    return a
