"""WFLW 98-point landmarks (list format of ``WFLW_annotations/list_98pt_rect_attr_train_test``).

One face per line, whitespace separated, 207 fields:
``x0 y0 ... x97 y97`` (196 values), ``x_min y_min x_max y_max`` (face box), 6 attribute flags
(pose, expression, illumination, make-up, occlusion, blur) and the image path relative to
``image_root`` (``WFLW_images``). Several faces of one image are several lines; names are
``<image path without suffix>#<line number>``.

Coordinates are used as stored plus ``coord_offset`` (default 0.0). WFLW does not document a
pixel convention; NME is unaffected by a common shift, only overlaying on images is.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from farl_edge.datasets.base import DatasetError, FaceSample, Samples, as_f32, finish

__all__ = ["read_wflw", "WFLW_ATTRIBUTES", "WFLW_FIELDS"]

WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "make_up", "occlusion", "blur")
WFLW_FIELDS = 98 * 2 + 4 + 6 + 1


def _default_image_root(annotation_file: Path) -> Path:
    for parent in annotation_file.parents:
        candidate = parent / "WFLW_images"
        if candidate.is_dir():
            return candidate
    return annotation_file.parent


def read_wflw(annotation_file: str | Path, image_root: str | Path | None = None,
              strict: bool = True, coord_offset: float = 0.0, check_images: bool = True) -> Samples:
    """Faces listed in a WFLW annotation file. ``image_root`` defaults to the nearest
    ``WFLW_images`` folder above the file, else the file's folder."""
    annotation_file = Path(annotation_file)
    if not annotation_file.is_file():
        raise DatasetError(f"WFLW annotation file {annotation_file} does not exist")
    root = Path(image_root) if image_root is not None else _default_image_root(annotation_file)
    samples: list[FaceSample] = []
    problems: list[tuple[str, str]] = []
    for line_no, line in enumerate(annotation_file.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{annotation_file}:{line_no}"
        fields = line.split()
        if len(fields) != WFLW_FIELDS:
            problems.append((where, f"{len(fields)} fields, expected {WFLW_FIELDS}"))
            continue
        try:
            values = np.array([float(v) for v in fields[:200]], dtype=np.float64)
            attrs = [int(float(v)) for v in fields[200:206]]
        except ValueError:
            problems.append((where, "non-numeric coordinate or attribute"))
            continue
        if not np.all(np.isfinite(values)):
            problems.append((where, "non-finite coordinates"))
            continue
        rel = fields[206]
        image = root / rel
        if check_images and not image.is_file():
            problems.append((where, f"image {image} not found"))
            continue
        lm = values[:196].reshape(98, 2) + coord_offset
        box = values[196:200] + coord_offset
        if box[2] < box[0] or box[3] < box[1]:
            problems.append((where, f"box {box.tolist()} has x_max < x_min or y_max < y_min"))
            continue
        attributes = dict(zip(WFLW_ATTRIBUTES, attrs))
        attributes["format"] = "wflw"
        samples.append(FaceSample(image_path=image, landmarks=as_f32(lm), box=as_f32(box),
                                  name=f"{Path(rel).with_suffix('').as_posix()}#{line_no}",
                                  attributes=attributes))
    if not samples and not problems:
        raise DatasetError(f"{annotation_file}: no faces listed")
    return finish(samples, problems, strict, f"WFLW {annotation_file}")
