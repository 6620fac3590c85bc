"""Pre-training shards from the shared face folders: images + captions generated from annotations.

    python train/make_pretrain_shards.py --output shards/faces \
        --lfw ../shared/data/lfw/images --ibug300w ../shared/data/300w/train \
        --celebm ../shared/data/celebamask-hq/train
    torchrun --nproc_per_node 1 train/pretrain.py --config train/configs/pretrain-small.json \
        --shards 'shards/faces/{000000..000011}.tar'

LFW faces carry no caption (masked image modelling only); 300-W and CelebAMask-HQ training faces
get a caption written from their own landmarks / parsing mask (``farl_edge/train/captions.py``).
Validation and test folders are refused. Never commit the shards: the faces' terms forbid it.
"""
from __future__ import annotations

import argparse
import json
import sys

from farl_edge.train.shards import MANIFEST, write_pretrain_shards


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="new (or empty) folder for the .tar shards and manifest.json")
    p.add_argument("--lfw", help="folder of unlabelled faces (no captions)")
    p.add_argument("--ibug300w", help="300-W training folder (NAME.jpg + NAME.pts)")
    p.add_argument("--celebm", help="CelebAMask-HQ training folder (images/ + masks/)")
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--max-side", type=int, default=256, help="longest image side stored (default 256)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        manifest = write_pretrain_shards(args.output, lfw=args.lfw, ibug300w=args.ibug300w, celebm=args.celebm,
                                         per_shard=args.per_shard, max_side=args.max_side, seed=args.seed)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    print(json.dumps({k: manifest[k] for k in ("samples", "captioned", "sources")}, indent=1))
    print(f"shards: {args.output}/{manifest['pattern']} (see {MANIFEST})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
