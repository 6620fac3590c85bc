"""LaPa face parsing (11 classes) with 106-point landmarks.

Layout: ``ROOT/SPLIT/images/NAME.jpg``, ``ROOT/SPLIT/labels/NAME.png`` (grayscale label ids
0-10, already in the order FaRL's LaPa model uses: background, skin, left_eyebrow,
right_eyebrow, left_eye, right_eye, nose, upper_lip, inner_mouth, lower_lip, hair) and
``ROOT/SPLIT/landmarks/NAME.txt`` (first line the point count, 106, then one ``x y`` line per
point). Landmarks are used as stored plus ``coord_offset`` (default 0.0); a missing
``landmarks`` folder gives samples without landmarks, a missing file inside it is a problem.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from farl_edge.datasets.base import DatasetError, FaceSample, Samples, as_f32, finish
from farl_edge.utils import IMAGE_SUFFIXES

__all__ = ["read_lapa", "read_lapa_landmarks", "LAPA_NUM_CLASSES", "LAPA_SPLITS"]

LAPA_NUM_CLASSES = 11
LAPA_SPLITS = ("train", "val", "test")
_LUT = np.arange(LAPA_NUM_CLASSES, dtype=np.uint8)


def read_lapa_landmarks(path: str | Path, n_points: int = 106) -> np.ndarray:
    path = Path(path)

    def bad(msg: str) -> DatasetError:
        return DatasetError(f"{path}: {msg}", [(str(path), msg)])

    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise bad(f"unreadable landmark file ({exc})") from exc
    if not lines:
        raise bad("empty landmark file")
    try:
        count = int(lines[0])
    except ValueError as exc:
        raise bad(f"first line {lines[0]!r} is not the point count") from exc
    if count != n_points:
        raise bad(f"point count {count}, expected {n_points}")
    if len(lines) - 1 != count:
        raise bad(f"declares {count} points but has {len(lines) - 1} point lines")
    try:
        pts = np.array([[float(v) for v in ln.split()] for ln in lines[1:]], dtype=np.float64)
    except ValueError as exc:
        raise bad("non-numeric point line") from exc
    if pts.shape != (count, 2) or not np.all(np.isfinite(pts)):
        raise bad("every point line must hold two finite values 'x y'")
    return pts


def read_lapa(root: str | Path, split: str = "test", strict: bool = True,
              coord_offset: float = 0.0) -> Samples:
    """Samples of one LaPa split (``root/split/{images,labels,landmarks}``)."""
    root = Path(root)
    folder = root / split
    images_dir, labels_dir, lm_dir = folder / "images", folder / "labels", folder / "landmarks"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise DatasetError(f"LaPa split folder {folder} needs images/ and labels/ subfolders")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"no images in {images_dir}")
    has_lm = lm_dir.is_dir()
    samples: list[FaceSample] = []
    problems: list[tuple[str, str]] = []
    for image in images:
        label = labels_dir / f"{image.stem}.png"
        if not label.is_file():
            problems.append((str(image), f"label map {label} not found"))
            continue
        landmarks = None
        if has_lm:
            lm_file = lm_dir / f"{image.stem}.txt"
            if not lm_file.is_file():
                problems.append((str(image), f"landmark file {lm_file} not found"))
                continue
            try:
                landmarks = as_f32(read_lapa_landmarks(lm_file) + coord_offset)
            except DatasetError as exc:
                problems.extend(exc.problems)
                continue
        samples.append(FaceSample(image_path=image, landmarks=landmarks, mask_path=label,
                                  name=image.stem, mask_lut=_LUT, attributes={"format": "lapa"}))
    known = {p.stem for p in images}
    for label in sorted(labels_dir.glob("*.png")):
        if label.stem not in known:
            problems.append((str(label), "label map without an image"))
    return finish(samples, problems, strict, f"LaPa {folder}")
