"""AFLW-19 (19-point AFLW protocol) from a plain text list.

FaRL reads AFLW-19 from ``AFLWinfo_release.mat`` (``data`` 24386x38 as x1..x19, y1..y19;
``bbox`` as left, right, top, bottom; ``mask_new`` 19 visibility flags; ``ra`` a permutation
whose first 20000 entries are train, the rest test; "frontal" = test faces with all 19 points
visible). This reader takes the same information as a documented text format, one face per line
(fields separated by whitespace or commas, ``#`` starts a comment line)::

    IMAGE_PATH x1 y1 x2 y2 ... x19 y19 x_min y_min x_max y_max [v1 ... v19]

* ``IMAGE_PATH``: relative to ``image_root`` (default: the list file's folder), no spaces.
* 19 interleaved ``x y`` pairs (38 values), then the face box (4 values): 43 fields in all.
* Optionally 19 visibility flags (0/1): 62 fields. ``subset="frontal"`` keeps faces with all 19
  visible and needs the flags.

Coordinates are used as stored plus ``coord_offset`` (default 0.0); the .mat coordinates are
MATLAB-style 1-based, so ``coord_offset=-0.5`` gives continuous coordinates for lists converted
from it without change. Names are ``<image path without suffix>#<line number>``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from farl_edge.datasets.base import DatasetError, FaceSample, Samples, as_f32, finish
from farl_edge.errors import UserError

__all__ = ["read_aflw19", "AFLW19_FIELDS"]

AFLW19_FIELDS = (1 + 38 + 4, 1 + 38 + 4 + 19)
_SPLIT = re.compile(r"[,\s]+")


def read_aflw19(list_file: str | Path, image_root: str | Path | None = None, subset: str = "full",
                strict: bool = True, coord_offset: float = 0.0, check_images: bool = True) -> Samples:
    """Faces of an AFLW-19 list file (format above). ``subset``: "full" or "frontal"."""
    list_file = Path(list_file)
    if subset not in ("full", "frontal"):
        raise UserError(f"subset must be 'full' or 'frontal', not {subset!r}")
    if not list_file.is_file():
        raise DatasetError(f"AFLW-19 list file {list_file} does not exist")
    root = Path(image_root) if image_root is not None else list_file.parent
    samples: list[FaceSample] = []
    problems: list[tuple[str, str]] = []
    for line_no, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{list_file}:{line_no}"
        fields = [f for f in _SPLIT.split(line) if f]
        if len(fields) not in AFLW19_FIELDS:
            problems.append((where, f"{len(fields)} fields, expected {AFLW19_FIELDS[0]} "
                                    f"(path, 19 x y pairs, box) or {AFLW19_FIELDS[1]} (+ 19 visibility flags)"))
            continue
        try:
            values = np.array([float(v) for v in fields[1:]], dtype=np.float64)
        except ValueError:
            problems.append((where, "non-numeric coordinate, box or flag"))
            continue
        if not np.all(np.isfinite(values)):
            problems.append((where, "non-finite values"))
            continue
        lm = values[:38].reshape(19, 2) + coord_offset
        box = values[38:42] + coord_offset
        if box[2] <= box[0] or box[3] <= box[1]:
            problems.append((where, f"box {box.tolist()} is empty or inverted (x_min y_min x_max y_max)"))
            continue
        attributes: dict = {"format": "aflw19"}
        if len(fields) == AFLW19_FIELDS[1]:
            vis = values[42:]
            if not np.all(np.isin(vis, (0.0, 1.0))):
                problems.append((where, "visibility flags must be 0 or 1"))
                continue
            attributes["visibility"] = vis.astype(np.uint8)
        if subset == "frontal":
            if "visibility" not in attributes:
                problems.append((where, "subset='frontal' needs the 19 visibility flags"))
                continue
            if not attributes["visibility"].all():
                continue  # not frontal: excluded by definition, not a problem
        image = root / fields[0]
        if check_images and not image.is_file():
            problems.append((where, f"image {image} not found"))
            continue
        samples.append(FaceSample(image_path=image, landmarks=as_f32(lm), box=as_f32(box),
                                  name=f"{Path(fields[0]).with_suffix('').as_posix()}#{line_no}",
                                  attributes=attributes))
    if not samples and not problems:
        raise DatasetError(f"{list_file}: no faces listed")
    return finish(samples, problems, strict, f"AFLW-19 {list_file}")
