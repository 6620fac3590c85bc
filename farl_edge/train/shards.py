"""Face folders → webdataset shards for pre-training (image + caption where annotations exist).

Sources (only training images: validation and test folders measure the models and are refused):

- ``lfw``: unlabelled faces (grayscale copies, fed as 3 equal channels); masked image modelling only,
  no ``txt`` member;
- ``300w``: 68-point faces; a face-centred square crop, caption from the landmarks;
- ``celebm``: CelebAMask-HQ images + index masks; caption from the mask.

Deterministic: the same folders and seed give byte-identical shards (sorted file lists, one seeded
shuffle that mixes the sources, fixed JPEG settings, fixed tar member times). A manifest
(``manifest.json``) records counts per source, how many samples carry a caption, the shard files
and their sha256. Everything is written to a temporary folder that is renamed into place at the end.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from farl_edge.errors import UserError
from farl_edge.fileio import publish_modes
from farl_edge.train.captions import caption_from_landmarks, caption_from_mask
from farl_edge.utils import IMAGE_SUFFIXES

EVALUATION_FOLDERS = ("test-helen", "val", "test")
MANIFEST = "manifest.json"
FACE_CROP_SCALE = 1.8  # 300-W crop side / landmark box side: a face share like LFW's and CelebAMask-HQ's


@dataclass(frozen=True)
class Item:
    source: str
    image: Path
    annotation: Path | None  # .pts or mask png


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _refuse_evaluation_folder(folder: Path) -> None:
    parts = {p.lower() for p in folder.resolve().parts}
    hit = parts.intersection(EVALUATION_FOLDERS)
    if hit:
        raise UserError(f"{folder}: '{hit.pop()}' is an evaluation split; pre-training takes training images only")


def collect(lfw: str | Path | None = None, ibug300w: str | Path | None = None,
            celebm: str | Path | None = None) -> list[Item]:
    items: list[Item] = []
    if lfw:
        folder = Path(lfw)
        _refuse_evaluation_folder(folder)
        items += [Item("lfw", p, None) for p in _images(folder)]
    if ibug300w:
        folder = Path(ibug300w)
        _refuse_evaluation_folder(folder)
        for p in _images(folder):
            pts = p.with_suffix(".pts")
            if not pts.exists():
                raise UserError(f"{p}: no landmark file {pts.name} beside it")
            items.append(Item("300w", p, pts))
    if celebm:
        folder = Path(celebm)
        _refuse_evaluation_folder(folder)
        images, masks = folder / "images", folder / "masks"
        if not images.is_dir() or not masks.is_dir():
            raise UserError(f"{folder}: expected images/ and masks/ (CelebAMask-HQ index-PNG layout)")
        for p in _images(images):
            m = masks / (p.stem + ".png")
            if not m.exists():
                raise UserError(f"{p}: no mask {m}")
            items.append(Item("celebm", p, m))
    for name, value in (("lfw", lfw), ("300w", ibug300w), ("celebm", celebm)):
        if value and not any(i.source == name for i in items):
            raise UserError(f"{value}: no images ({', '.join(IMAGE_SUFFIXES)}) found for source {name}")
    if not items:
        raise UserError("no source folder given: name at least one of lfw, 300w, celebm")
    return items


def _encode(img, max_side: int) -> bytes:
    from PIL import Image

    img = img.convert("RGB")
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _face_crop(image: np.ndarray, points: np.ndarray, out_size: int) -> np.ndarray:
    import cv2

    lo, hi = points.min(0), points.max(0)
    centre = (lo + hi) / 2
    side = FACE_CROP_SCALE * float(max(hi - lo))
    scale = out_size / side
    m = np.array([[scale, 0, out_size / 2 - scale * centre[0]], [0, scale, out_size / 2 - scale * centre[1]]])
    return cv2.warpAffine(image, m, (out_size, out_size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)


def make_sample(item: Item, max_side: int) -> tuple[bytes, str | None]:
    """(JPEG bytes, caption or None) for one item."""
    from PIL import Image

    from farl_edge.datasets.ibug300w import read_pts

    if item.source == "lfw":
        with Image.open(item.image) as img:
            return _encode(img, max_side), None
    if item.source == "300w":
        points = read_pts(item.annotation)
        with Image.open(item.image) as img:
            rgb = np.asarray(img.convert("RGB"))
        crop = _face_crop(rgb, points, max_side)
        return _encode(Image.fromarray(crop), max_side), caption_from_landmarks(points)
    with Image.open(item.annotation) as m:
        mask = np.asarray(m)
    with Image.open(item.image) as img:
        return _encode(img, max_side), caption_from_mask(mask)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_pretrain_shards(output: str | Path, *, lfw=None, ibug300w=None, celebm=None, per_shard: int = 1000,
                          max_side: int = 256, seed: int = 0, progress: bool = True) -> dict:
    """Write shards ``{000000..}.tar`` + ``manifest.json`` into ``output`` (must not exist or be empty)."""
    from tqdm.auto import tqdm

    if per_shard < 1 or max_side < 32:
        raise UserError("per_shard must be >= 1 and max_side >= 32")
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose a new output folder")
    items = collect(lfw, ibug300w, celebm)
    random.Random(seed).shuffle(items)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        shards, counts = [], {}
        for start in tqdm(range(0, len(items), per_shard), desc="shards", disable=not progress):
            name = f"{start // per_shard:06d}.tar"
            with tarfile.open(tmp / name, "w", format=tarfile.USTAR_FORMAT) as tar:
                for i, item in enumerate(items[start:start + per_shard], start=start):
                    image, caption = make_sample(item, max_side)
                    key = f"{i:07d}"
                    meta = {"source": item.source, "file": item.image.name,
                            "caption_generated_from_annotations": caption is not None}
                    _add(tar, f"{key}.jpg", image)
                    if caption is not None:
                        _add(tar, f"{key}.txt", caption.encode())
                    _add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
                    c = counts.setdefault(item.source, {"images": 0, "captioned": 0})
                    c["images"] += 1
                    c["captioned"] += caption is not None
            shards.append({"file": name, "samples": min(per_shard, len(items) - start),
                           "sha256": hashlib.sha256((tmp / name).read_bytes()).hexdigest()})
        manifest = {
            "format": "farl-edge-pretrain-shards/1",
            "samples": len(items),
            "captioned": sum(c["captioned"] for c in counts.values()),
            "sources": {k: {**v, "folder": str({"lfw": lfw, "300w": ibug300w, "celebm": celebm}[k])} for k, v in counts.items()},
            "captions": "generated from each face's own annotations (farl_edge.train.captions), not human-written",
            "seed": seed, "per_shard": per_shard, "max_side": max_side,
            "shards": shards,
            "pattern": f"{{000000..{len(shards) - 1:06d}}}.tar",
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        publish_modes(tmp)  # mkdtemp made it 0700: the modes a plain mkdir / open would give
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
