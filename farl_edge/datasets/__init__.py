"""Readers for the face data sets FaRL evaluates on. Torch-free (numpy, OpenCV, Pillow).

Every reader returns a :class:`Samples` list of :class:`FaceSample`; see
:mod:`farl_edge.datasets.base` for the coordinate convention and the error policy
(``strict=True`` raises one :class:`DatasetError` listing every bad file; ``strict=False``
returns the good samples with ``.problems``).

``open_dataset(path)`` detects the format from the layout:

==================  ===========================================================================
format              what ``path`` must be
==================  ===========================================================================
``celebamask-hq``   folder with ``images/`` + ``masks/``; or ``CelebA-HQ-img/`` +
                    ``CelebAMask-HQ-mask-anno/``; or a parent of split folders (``split=``)
``lapa``            split folder with ``images/`` + ``labels/``; or a root of split folders
                    (``split=``)
``wflw``            a 207-field WFLW list file, or a folder holding ``WFLW_annotations/``
                    (``split=`` train/test)
``aflw19``          a 43/62-field AFLW-19 list file (see :mod:`.aflw19`)
``300w``            a folder with ``NAME.pts`` (+ image) files, searched recursively
==================  ===========================================================================
"""
from __future__ import annotations

from pathlib import Path

from farl_edge.datasets.aflw19 import AFLW19_FIELDS, read_aflw19
from farl_edge.datasets.base import DatasetError, FaceSample, Samples, read_index_png
from farl_edge.datasets.celebamask_hq import (CELEBAMASK_TO_FARL, FARL_CELEBM_LABELS,
                                              PALETTE_ORDER, PALETTE_TO_FARL_LUT,
                                              read_celebamask_hq)
from farl_edge.datasets.ibug300w import read_300w, read_pts
from farl_edge.datasets.lapa import LAPA_NUM_CLASSES, read_lapa
from farl_edge.datasets.wflw import WFLW_FIELDS, read_wflw
from farl_edge.errors import UserError

__all__ = [
    "DatasetError",
    "FaceSample",
    "Samples",
    "FORMATS",
    "open_dataset",
    "detect_format",
    "read_300w",
    "read_pts",
    "read_wflw",
    "read_aflw19",
    "read_lapa",
    "read_celebamask_hq",
    "read_index_png",
    "CELEBAMASK_TO_FARL",
    "FARL_CELEBM_LABELS",
    "PALETTE_ORDER",
    "PALETTE_TO_FARL_LUT",
    "LAPA_NUM_CLASSES",
]

FORMATS = ("300w", "wflw", "aflw19", "lapa", "celebamask-hq")


def _first_record_fields(path: Path) -> int | None:
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line and not line.startswith("#"):
                    return len(line.replace(",", " ").split())
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _split_folders(path: Path, inner: tuple[str, str]) -> list[str]:
    return sorted(p.name for p in path.iterdir()
                  if p.is_dir() and all((p / sub).is_dir() for sub in inner))


def detect_format(path: str | Path) -> str:
    """The data-set format of ``path`` (one of ``FORMATS``); DatasetError says what was tried."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    if path.is_file():
        n = _first_record_fields(path)
        if n == WFLW_FIELDS:
            return "wflw"
        if n in AFLW19_FIELDS:
            return "aflw19"
        raise DatasetError(
            f"cannot tell the format of file {path}: looked for a WFLW list ({WFLW_FIELDS} fields a "
            f"line) or an AFLW-19 list ({' or '.join(map(str, AFLW19_FIELDS))} fields); "
            f"first record has {n} fields")
    if (path / "CelebA-HQ-img").is_dir() and (path / "CelebAMask-HQ-mask-anno").is_dir():
        return "celebamask-hq"
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return "celebamask-hq"
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return "lapa"
    if _split_folders(path, ("images", "masks")):
        return "celebamask-hq"
    if _split_folders(path, ("images", "labels")):
        return "lapa"
    if (path / "WFLW_annotations").is_dir():
        return "wflw"
    if next(path.rglob("*.pts"), None) is not None:
        return "300w"
    raise DatasetError(
        f"cannot tell the data-set format of {path}. Looked for: images/+masks/ or "
        f"CelebA-HQ-img/+CelebAMask-HQ-mask-anno/ (celebamask-hq), images/+labels/ (lapa), "
        f"split folders holding either, WFLW_annotations/ (wflw), *.pts files (300w), or a "
        f"WFLW / AFLW-19 list file. Name it: `--format` on the command line (format= in Python), one of "
        f"{', '.join(FORMATS)}.")


def _pick_split(path: Path, inner: tuple[str, str], split: str | None, fmt: str) -> str:
    splits = _split_folders(path, inner)
    if split is None:
        if len(splits) == 1:
            return splits[0]
        raise DatasetError(f"{path} holds {fmt} splits {splits}: pass split=")
    if split not in splits:
        raise DatasetError(f"{path}: no {fmt} split {split!r}; found {splits}")
    return split


def open_dataset(path: str | Path, format: str | None = None, *, split: str | None = None,
                 strict: bool = True, **kwargs) -> Samples:
    """Read the data set at ``path``; ``format`` None auto-detects (see module doc). ``split``
    picks a split folder / list where the layout has several; other keyword arguments go to the
    reader (``image_root``, ``coord_offset``, ``subset``, ...)."""
    path = Path(path)
    fmt = detect_format(path) if format is None else format
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; known: {FORMATS}")
    if fmt == "300w":
        return read_300w(path, strict=strict, **kwargs)
    if fmt == "aflw19":
        return read_aflw19(path, strict=strict, **kwargs)
    if fmt == "wflw":
        if path.is_dir():
            ann = path / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
            if split is None:
                raise DatasetError(f"{path}: WFLW root needs split='train' or 'test'")
            lst = ann / f"list_98pt_rect_attr_{split}.txt"
            if not lst.is_file():
                raise DatasetError(f"{path}: no WFLW list {lst}")
            kwargs.setdefault("image_root", path / "WFLW_images")
            return read_wflw(lst, strict=strict, **kwargs)
        return read_wflw(path, strict=strict, **kwargs)
    if fmt == "lapa":
        if (path / "images").is_dir() and (path / "labels").is_dir():
            return read_lapa(path.parent, path.name, strict=strict, **kwargs)
        return read_lapa(path, _pick_split(path, ("images", "labels"), split, "LaPa"), strict=strict, **kwargs)
    # celebamask-hq
    if (path / "CelebA-HQ-img").is_dir() or ((path / "images").is_dir() and (path / "masks").is_dir()):
        return read_celebamask_hq(path, split=split, strict=strict, **kwargs)
    return read_celebamask_hq(path, split=_pick_split(path, ("images", "masks"), split, "CelebAMask-HQ"),
                              strict=strict, **kwargs)
