"""FaRL pre-training (image-text contrastive + masked image modelling) on LAION-FACE webdataset shards.

    torchrun --nproc_per_node 8 train/pretrain.py --config train/configs/pretrain-b16.json \
        --shards 'laion-face/{00000..09999}.tar' --output runs/pretrain-b16
    torchrun --nproc_per_node 2 train/pretrain.py --config train/configs/pretrain-small.json \
        --shards 'path/{000000..000009}.tar'

Re-running with the same --output resumes from ``last.pt`` (model, optimiser, schedule, step, RNG
and every rank's position in its data streams). ``--set key=value`` overrides any config entry,
nested ones with a dot (``--set mim.target=pixels --set mim.weight=0.5``); values are JSON
(``--set bf16=false``), or plain strings when they are not valid JSON.
"""
import argparse
import json
import os

from farl_edge.train.pretrain import check_shards, load_config, run


def _parse_set(items):
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="JSON recipe, e.g. train/configs/pretrain-small.json")
    p.add_argument("--shards", help="webdataset shards, brace notation: 'dir/{000000..000099}.tar'")
    p.add_argument("--output", help="run folder (resumes from its last.pt)")
    p.add_argument("--init", help="start from an official FaRL .pth (ignored when resuming)")
    p.add_argument("--batch-size", type=int, help="per rank")
    p.add_argument("--total-steps", type=int, help="schedule length")
    p.add_argument("--stop-at-step", type=int, help="stop (and checkpoint) at this step; resume later")
    p.add_argument("--workers", type=int, help="DataLoader workers per rank")
    p.add_argument("--threads", type=int, help="torch threads per rank")
    p.add_argument("--seed", type=int)
    p.add_argument("--trust-torchscript", action="store_true",
                   help="allow a TorchScript mim.tokenizer (loading it runs code from the file)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config entry (repeatable)")
    args = p.parse_args()
    overrides = {"shards": args.shards, "output": args.output, "init": args.init, "batch_size": args.batch_size,
                 "total_steps": args.total_steps, "stop_at_step": args.stop_at_step, "workers": args.workers,
                 "threads": args.threads, "seed": args.seed, "trust_torchscript": args.trust_torchscript or None,
                 **_parse_set(args.set)}
    try:
        cfg = load_config(args.config, overrides)
        check_shards(cfg["shards"])
    except (ValueError, OSError) as e:
        raise SystemExit(f"train/pretrain.py: error: {e}") from None
    result = run(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
