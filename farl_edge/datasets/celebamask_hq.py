"""CelebAMask-HQ 19-class face parsing, mapped explicitly to FaRL's class order.

Two layouts:

(a) index-PNG layout (``../shared/data/celebamask-hq/{train,val}``): ``images/NAME.jpg`` and
    ``masks/NAME.png``; the masks are palette PNGs whose indices follow the common CelebAMask-HQ
    tooling order (``PALETTE_ORDER``: 0 background, 1 skin, 2 nose, 3 eyeglasses, 4 l_eye, ...,
    18 cloth). Read with Pillow (OpenCV would convert the palette to colours).
(b) official layout: ``CelebA-HQ-img/N.jpg`` (1024x1024) and
    ``CelebAMask-HQ-mask-anno/K/NNNNN_{part}.png`` (512x512 binary masks, K = N // 2000).
    Parts are painted in FaRL's label order, later over earlier, exactly like FaRL's
    ``CelebAMaskHQ.make_label`` (a pixel in both "skin" and "hair" is hair). FaRL resizes the
    1024 image to 512 (bilinear) for training and evaluation; the mask stays 512. With
    ``split`` in train/val/test the official ``CelebA-HQ-to-CelebA-mapping.txt`` and
    ``list_eval_partition.txt`` in the root select the split, as in FaRL.

Left/right: CelebAMask-HQ's ``l_``/``r_`` parts are the *person's* left/right (on the shared data
``l_eye`` pixels lie on the image's right half). FaRL's loader puts ``l_ear, r_ear, l_brow,
r_brow, l_eye, r_eye`` at indices 4..9 named ``rr, lr, rb, lb, re, le``, i.e. FaRL's
"right"/"left" are image sides: ``l_eye`` -> ``right_eye`` (index 8). ``CELEBAMASK_TO_FARL``
below is that mapping; the indices match FaRL's (and facer's) released models.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from farl_edge.datasets.base import DatasetError, FaceSample, Samples, finish
from farl_edge.errors import UserError
from farl_edge.utils import IMAGE_SUFFIXES

__all__ = [
    "FARL_CELEBM_LABELS",
    "PALETTE_ORDER",
    "CELEBAMASK_TO_FARL",
    "PALETTE_TO_FARL_LUT",
    "PART_TO_FARL_INDEX",
    "read_celebamask_hq",
]

# ---------------------------------------------------------------------------------------------
# Mapping tables (data). Names on the left are CelebAMask-HQ's part names (the official mask
# file suffixes); names on the right are FaRL's labels (farl_edge/configs/models/*celebm*.json).
FARL_CELEBM_LABELS = (
    "background", "neck", "face", "cloth", "right_ear", "left_ear", "right_eyebrow",
    "left_eyebrow", "right_eye", "left_eye", "nose", "inner_mouth", "lower_lip", "upper_lip",
    "hair", "glasses", "hat", "earring", "necklace",
)

# index-PNG (tooling) order: index -> CelebAMask-HQ part name
PALETTE_ORDER = (
    "background",  # 0
    "skin",        # 1
    "nose",        # 2
    "eye_g",       # 3 eyeglasses
    "l_eye",       # 4 left eye
    "r_eye",       # 5 right eye
    "l_brow",      # 6 left brow
    "r_brow",      # 7 right brow
    "l_ear",       # 8 left ear
    "r_ear",       # 9 right ear
    "mouth",       # 10 inner mouth
    "u_lip",       # 11 upper lip
    "l_lip",       # 12 lower lip
    "hair",        # 13
    "hat",         # 14
    "ear_r",       # 15 earring
    "neck_l",      # 16 necklace
    "neck",        # 17
    "cloth",       # 18
)

CELEBAMASK_TO_FARL = {
    "background": "background",
    "neck": "neck",
    "skin": "face",
    "cloth": "cloth",
    "l_ear": "right_ear",       # FaRL "rr"
    "r_ear": "left_ear",        # FaRL "lr"
    "l_brow": "right_eyebrow",  # FaRL "rb"
    "r_brow": "left_eyebrow",   # FaRL "lb"
    "l_eye": "right_eye",       # FaRL "re"
    "r_eye": "left_eye",        # FaRL "le"
    "nose": "nose",
    "mouth": "inner_mouth",
    "l_lip": "lower_lip",
    "u_lip": "upper_lip",
    "hair": "hair",
    "eye_g": "glasses",
    "hat": "hat",
    "ear_r": "earring",
    "neck_l": "necklace",
}
# ---------------------------------------------------------------------------------------------


def _build_tables():
    if sorted(CELEBAMASK_TO_FARL.values()) != sorted(FARL_CELEBM_LABELS):
        raise AssertionError("CELEBAMASK_TO_FARL must cover every FaRL label exactly once")
    if sorted(CELEBAMASK_TO_FARL) != sorted(PALETTE_ORDER):
        raise AssertionError("CELEBAMASK_TO_FARL must cover every palette class exactly once")
    farl_index = {name: i for i, name in enumerate(FARL_CELEBM_LABELS)}
    lut = np.array([farl_index[CELEBAMASK_TO_FARL[part]] for part in PALETTE_ORDER], dtype=np.uint8)
    part_index = {part: farl_index[name] for part, name in CELEBAMASK_TO_FARL.items() if part != "background"}
    return lut, part_index


PALETTE_TO_FARL_LUT, PART_TO_FARL_INDEX = _build_tables()
PALETTE_TO_FARL_LUT.flags.writeable = False

_PART_FILE = re.compile(r"^(\d+)_([a-z_]+)\.png$")
_SPLIT_GROUPS = {"train": 0, "val": 1, "test": 2}


def read_celebamask_hq(root: str | Path, split: str | None = None, strict: bool = True) -> Samples:
    """CelebAMask-HQ samples with masks in FaRL order (layout auto-detected, see module doc).

    ``root`` is a folder with ``images/`` + ``masks/`` (index-PNG layout; with ``split`` it may
    be the parent of split folders), or the official root with ``CelebA-HQ-img`` and
    ``CelebAMask-HQ-mask-anno``."""
    root = Path(root)
    if (root / "CelebA-HQ-img").is_dir() and (root / "CelebAMask-HQ-mask-anno").is_dir():
        return _read_official(root, split, strict)
    folder = root
    if split is not None and (root / split).is_dir():
        folder = root / split
    if (folder / "images").is_dir() and (folder / "masks").is_dir():
        return _read_index_png(folder, strict)
    raise DatasetError(
        f"{root} is not a CelebAMask-HQ folder: looked for images/ + masks/ (index-PNG layout"
        f"{', or SPLIT/images + SPLIT/masks' if split else ''}) and for CelebA-HQ-img/ + "
        f"CelebAMask-HQ-mask-anno/ (official layout)")


def _read_index_png(folder: Path, strict: bool) -> Samples:
    images_dir, masks_dir = folder / "images", folder / "masks"
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"no images in {images_dir}")
    samples: list[FaceSample] = []
    problems: list[tuple[str, str]] = []
    for image in images:
        mask = masks_dir / f"{image.stem}.png"
        if not mask.is_file():
            problems.append((str(image), f"mask {mask} not found"))
            continue
        samples.append(FaceSample(image_path=image, mask_path=mask, name=image.stem,
                                  mask_lut=PALETTE_TO_FARL_LUT,
                                  attributes={"format": "celebamask-hq", "layout": "index-png"}))
    known = {p.stem for p in images}
    for mask in sorted(masks_dir.glob("*.png")):
        if mask.stem not in known:
            problems.append((str(mask), "mask without an image"))
    return finish(samples, problems, strict, f"CelebAMask-HQ {folder}")


def _split_ids(root: Path, split: str) -> set[int]:
    if split not in _SPLIT_GROUPS:
        raise UserError(f"split must be one of {sorted(_SPLIT_GROUPS)} or None, not {split!r}")
    mapping_file = root / "CelebA-HQ-to-CelebA-mapping.txt"
    partition_file = root / "list_eval_partition.txt"
    for f in (mapping_file, partition_file):
        if not f.is_file():
            raise DatasetError(f"split={split!r} needs {f} (official CelebAMask-HQ split files)")
    orig_to_hq: dict[str, int] = {}
    for line in mapping_file.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].endswith(".jpg") and parts[0].isdigit():
            orig_to_hq[parts[2]] = int(parts[0])
    group = _SPLIT_GROUPS[split]
    ids = set()
    for line in partition_file.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].endswith(".jpg") and parts[0] in orig_to_hq and int(parts[1]) == group:
            ids.add(orig_to_hq[parts[0]])
    return ids


def _read_official(root: Path, split: str | None, strict: bool) -> Samples:
    img_dir, anno_dir = root / "CelebA-HQ-img", root / "CelebAMask-HQ-mask-anno"
    problems: list[tuple[str, str]] = []
    parts: dict[int, dict[str, Path]] = {}
    for path in sorted(anno_dir.rglob("*.png")):
        m = _PART_FILE.match(path.name)
        if m is None or m.group(2) not in PART_TO_FARL_INDEX:
            problems.append((str(path), "not a NNNNN_{part}.png mask with a known CelebAMask-HQ part"))
            continue
        parts.setdefault(int(m.group(1)), {})[m.group(2)] = path
    images: dict[int, Path] = {}
    for path in img_dir.iterdir():
        if path.suffix.lower() in IMAGE_SUFFIXES and path.stem.isdigit():
            images[int(path.stem)] = path
    wanted = _split_ids(root, split) if split is not None else None
    samples: list[FaceSample] = []
    for idx in sorted(images):
        if wanted is not None and idx not in wanted:
            continue
        found = parts.get(idx)
        if not found:
            problems.append((str(images[idx]), f"no mask parts {idx:05d}_*.png under {anno_dir}"))
            continue
        ordered = tuple(sorted(((PART_TO_FARL_INDEX[p], path) for p, path in found.items()),
                               key=lambda t: t[0]))
        samples.append(FaceSample(image_path=images[idx], name=str(idx), mask_parts=ordered,
                                  mask_hw=(512, 512),
                                  attributes={"format": "celebamask-hq", "layout": "official"}))
    for idx in sorted(set(parts) - set(images)):
        if wanted is None or idx in wanted:
            problems.append((str(next(iter(parts[idx].values()))), f"mask parts for image {idx} without an image"))
    if not samples and not problems:
        raise DatasetError(f"no images in {img_dir}")
    return finish(samples, problems, strict, f"CelebAMask-HQ {root}")
