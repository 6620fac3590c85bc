"""Write small img2dataset-style webdataset shards from a folder of real face images.

    python train/make_test_shards.py ../shared/data/celebamask-hq/train/images /tmp/shards --shards 4 --per-shard 32
    torchrun --nproc_per_node 2 train/pretrain.py --config train/configs/pretrain-small.json \
        --shards '/tmp/shards/{000000..000003}.tar' --output runs/pretrain-test

Each sample is ``KEY.jpg`` (or ``KEY.png``), ``KEY.txt`` and ``KEY.json`` as img2dataset writes
them. THE CAPTIONS ARE PLACEHOLDERS: variants of "a photo of a face" picked at random, not
descriptions of the images. The shards exercise the pre-training pipeline (reading, decoding,
resampling, resuming); they are not training data. Real pre-training reads LAION-FACE shards
fetched with img2dataset.

Do not commit shards made from ../shared/data into the repository (the data's terms forbid it).
"""
from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

PLACEHOLDER_CAPTIONS = (
    "a photo of a face",
    "a close-up photo of a person's face",
    "a portrait photo of a person",
    "a photo of a smiling face",
    "a face looking at the camera",
    "a headshot of a person",
    "a cropped photo of a human face",
    "a picture of someone's face",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def write_test_shards(images_dir: str | Path, out_dir: str | Path, num_shards: int = 4, per_shard: int = 32,
                      seed: int = 0, max_side: int | None = None) -> list[Path]:
    """Write ``num_shards`` tars of ``per_shard`` samples each; returns the shard paths.

    Images are taken in a seeded random order (cycling when there are fewer than needed). With
    ``max_side`` they are downscaled (longest side) and re-encoded as JPEG, for fast tests.
    """
    import webdataset as wds
    from PIL import Image

    images = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SystemExit(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    rng = random.Random(seed)
    order = images[:]
    rng.shuffle(order)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    n = 0
    for shard in range(num_shards):
        path = out / f"{shard:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                src = order[n % len(order)]
                n += 1
                ext, data, (w, h) = _image_bytes(src, max_side, Image)
                caption = rng.choice(PLACEHOLDER_CAPTIONS)
                key = f"{shard:05d}{i:04d}"
                meta = {"key": key, "caption": caption, "caption_is_placeholder": True, "status": "success",
                        "source_file": src.name, "width": w, "height": h, "url": None, "error_message": None}
                sink.write({"__key__": key, ext: data, "txt": caption, "json": json.dumps(meta).encode()})
        paths.append(path)
    return paths


def _image_bytes(path: Path, max_side: int | None, Image) -> tuple[str, bytes, tuple[int, int]]:
    with Image.open(path) as img:
        size = img.size
        if not max_side or max(size) <= max_side:
            ext = "png" if path.suffix.lower() == ".png" else "jpg"
            return ext, path.read_bytes(), size
        img = img.convert("RGB")
        img.thumbnail((max_side, max_side), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        return "jpg", buf.getvalue(), img.size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", help="folder of face images, e.g. ../shared/data/celebamask-hq/train/images "
                                  "or ../shared/data/300w/train")
    p.add_argument("output", help="folder for the .tar shards")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--per-shard", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-side", type=int, help="downscale images so the longest side is at most this")
    args = p.parse_args()
    paths = write_test_shards(args.images, args.output, args.shards, args.per_shard, args.seed, args.max_side)
    last = len(paths) - 1
    print(f"wrote {len(paths)} shards x {args.per_shard} samples (placeholder captions):"
          f" {Path(args.output) / ('{000000..%06d}.tar' % last)}")


if __name__ == "__main__":
    main()
