"""300-W / iBUG 68-point landmarks: ``NAME.jpg|png`` + ``NAME.pts`` pairs.

Works on flat folders (``../shared/data/300w/train``, ``test-helen``) and on the official
nested layouts (``300W/01_Indoor``, ``helen/testset``, ``lfpw/trainset``, ``afw``, ``ibug`` ...):
``.pts`` files are found recursively. Sample names are the ``.pts`` path relative to the folder,
without suffix (``helen/testset/296814969_3``).

``.pts`` format: ``version: 1``, ``n_points: 68``, ``{``, 68 lines ``x y``, ``}``. Coordinates
are **1-based** pixel coordinates; ``coord_offset=-0.5`` (default) turns them into continuous
coordinates (pixel i spans [i, i+1)). Use ``-1.0`` for 0-based pixel indices.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from farl_edge.datasets.base import DatasetError, FaceSample, Samples, as_f32, find_image, finish

__all__ = ["read_pts", "read_300w"]


def read_pts(path: str | Path, n_points: int | None = 68) -> np.ndarray:
    """Raw (K, 2) float64 coordinates of an iBUG ``.pts`` file (as stored: 1-based).
    Raises DatasetError naming the file on any format problem."""
    path = Path(path)

    def bad(msg: str) -> DatasetError:
        return DatasetError(f"{path}: {msg}", [(str(path), msg)])

    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise bad(f"unreadable .pts file ({exc})") from exc
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    header: dict[str, str] = {}
    i = 0
    while i < len(lines) and lines[i] != "{":
        if ":" not in lines[i]:
            raise bad(f"unexpected header line {lines[i]!r}")
        key, value = lines[i].split(":", 1)
        header[key.strip().lower()] = value.strip()
        i += 1
    if i == len(lines):
        raise bad("missing '{'")
    if "n_points" not in header:
        raise bad("missing 'n_points:' header")
    try:
        declared = int(header["n_points"])
    except ValueError as exc:
        raise bad(f"bad n_points {header['n_points']!r}") from exc
    try:
        end = lines.index("}", i + 1)
    except ValueError as exc:
        raise bad("missing '}'") from exc
    if any(ln for ln in lines[end + 1:]):
        raise bad("content after '}'")
    body = lines[i + 1:end]
    if len(body) != declared:
        raise bad(f"n_points says {declared} but {len(body)} point lines found")
    if n_points is not None and declared != n_points:
        raise bad(f"expected {n_points} points, file has {declared}")
    pts = np.empty((declared, 2), dtype=np.float64)
    for k, ln in enumerate(body):
        parts = ln.replace(",", " ").split()
        if len(parts) != 2:
            raise bad(f"point line {k + 1} {ln!r} does not have 2 values")
        try:
            pts[k] = [float(parts[0]), float(parts[1])]
        except ValueError as exc:
            raise bad(f"point line {k + 1} {ln!r} is not numeric") from exc
    if not np.all(np.isfinite(pts)):
        raise bad("non-finite coordinates")
    return pts


def read_300w(folder: str | Path, strict: bool = True, coord_offset: float = -0.5,
              n_points: int | None = 68) -> Samples:
    """All ``.pts`` + image pairs under ``folder`` (recursive), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"300-W folder {folder} does not exist")
    pts_files = sorted(folder.rglob("*.pts"))
    if not pts_files:
        raise DatasetError(f"no .pts files under {folder} (300-W layout: NAME.jpg + NAME.pts)")
    samples: list[FaceSample] = []
    problems: list[tuple[str, str]] = []
    for pts_path in pts_files:
        try:
            raw = read_pts(pts_path, n_points)
        except DatasetError as exc:
            problems.extend(exc.problems)
            continue
        image = find_image(pts_path.parent, pts_path.stem)
        if image is None:
            problems.append((str(pts_path), "no image with the same name (.jpg/.png/...)"))
            continue
        name = pts_path.relative_to(folder).with_suffix("").as_posix()
        samples.append(FaceSample(image_path=image, landmarks=as_f32(raw + coord_offset), name=name,
                                  attributes={"format": "300w"}))
    return finish(samples, problems, strict, f"300-W {folder}")
