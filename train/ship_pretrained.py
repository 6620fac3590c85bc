"""Ship a pre-training run as package weights: image + text towers, fp16 safetensors + model card.

    python train/ship_pretrained.py runs/pretrain-small [--shards-manifest shards/faces/manifest.json]

Writes ``farl_edge/data/weights/<model>.safetensors`` (official FaRL key layout: ``visual.*``, the
CLIP text keys, ``logit_scale``; the MIM branch is pre-training only and is left out) and its JSON
card: data, objective, steps, time, first/last losses, and that the captions were generated from
annotations. Fine-tuning reads it like an official FaRL file (``--init``, strict, allow-listed keys).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

WEIGHTS = Path(__file__).resolve().parents[1] / "farl_edge" / "data" / "weights"
DATA_TERMS = ("Pre-trained on research / non-commercial face data (LFW, 300-W train, CelebAMask-HQ train "
              "subsets): the weights inherit those terms; not for commercial use.")


def _losses(log: Path, window: int = 100) -> dict:
    rows = list(csv.DictReader(log.open()))
    if not rows:
        return {}

    def mean(part, key):
        vals = [float(r[key]) for r in part if r[key] not in ("", "nan")]
        return round(sum(vals) / len(vals), 4) if vals else None

    first, last = rows[:window], rows[-window:]
    return {f"{which}_{window}_steps": {k: mean(part, k) for k in ("loss", "loss_clip", "loss_mim", "acc_i2t")}
            for which, part in (("first", first), ("last", last))}


def _last_time(log: Path) -> float | None:
    rows = list(csv.DictReader(log.open())) if log.exists() else []
    return float(rows[-1]["time_s"]) if rows else None


def main(argv=None) -> int:
    from farl_edge.checkpoint import card_from_config, load_clip_weights, save_checkpoint
    from farl_edge.models.factory import create_clip_model
    from farl_edge.registry import get_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="pre-training output folder (checkpoints/, train_log.csv, result.json)")
    p.add_argument("--shards-manifest", type=Path, help="manifest.json of the shards the run read")
    p.add_argument("--output", type=Path, help="default: farl_edge/data/weights/<model>.safetensors")
    args = p.parse_args(argv)
    ckpts = sorted((args.run / "checkpoints").glob("step-*.pth"))
    if not ckpts:
        print(f"error: no checkpoints/step-*.pth in {args.run}", file=sys.stderr)
        return 2
    ckpt = ckpts[-1]
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    meta = saved.get("farl_edge", {})
    config = json.loads(torch.load(args.run / "last.pt", map_location="cpu", weights_only=True)["extra"]["config"]) \
        if (args.run / "last.pt").exists() else {}
    name = meta.get("model") or config.get("model")
    cfg = get_config(name)
    clip = create_clip_model(name, mim=False)
    load_clip_weights(clip, ckpt)  # strict; the MIM branch is on the allow-list of ignored keys
    result = json.loads((args.run / "result.json").read_text()) if (args.run / "result.json").exists() else {}
    shards = json.loads(args.shards_manifest.read_text()) if args.shards_manifest else None
    card = card_from_config(cfg)
    card["pretraining"] = {
        "objective": "image-text contrastive (CLIP InfoNCE) + masked image modelling "
                     f"({meta.get('mim_target', config.get('mim', {}).get('target'))} target; FaRL's own target is "
                     "BEiT visual tokens, not available offline)",
        "captions": "generated from each face's own annotations (farl_edge/train/captions.py: parts and accessories "
                    "from CelebAMask-HQ masks, head pose and mouth opening from 300-W landmarks), as MM-CelebA-HQ's "
                    "captions were generated from attributes; faces without annotations (LFW) train MIM only",
        "data": ({k: shards[k] for k in ("samples", "captioned", "sources", "seed")} if shards else
                 "LFW + 300-W train + CelebAMask-HQ train images (train/make_pretrain_shards.py)"),
        "steps": meta.get("step"), "batch_size": config.get("batch_size"), "lr": config.get("lr"),
        "train_seconds": result.get("train_seconds") or _last_time(args.run / "train_log.csv"),
        "planned_steps": config.get("total_steps"), "hardware": "1 CPU thread (2-core AMD EPYC VM)",
        "losses": _losses(args.run / "train_log.csv"),
        "recipe": "train/configs/pretrain-small.json",
        "reproduce": ["python train/make_pretrain_shards.py --output shards/faces --lfw ../shared/data/lfw/images "
                      "--ibug300w ../shared/data/300w/train --celebm ../shared/data/celebamask-hq/train",
                      "torchrun --nproc_per_node 1 train/pretrain.py --config train/configs/pretrain-small.json "
                      "--shards 'shards/faces/{000000..000011}.tar'",
                      f"python train/ship_pretrained.py {args.run} --shards-manifest shards/faces/manifest.json"],
    }
    card["license"] = DATA_TERMS
    out = args.output or WEIGHTS / f"{name}.safetensors"
    save_checkpoint(clip, out, card=card, dtype=torch.float16)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) from {ckpt} (step {meta.get('step')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
