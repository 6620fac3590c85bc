"""Fine-tune a FaRL parsing or alignment model.

    torchrun --nproc_per_node 1 train/finetune.py --config train/configs/small-300w.json
    torchrun --nproc_per_node 8 train/finetune.py --config train/configs/b16-lapa-448.json --init FaRL-Base-Patch16-LAIONFace20M-ep16.pth

Re-running with the same --output resumes from ``last.pt``.
"""
import argparse
import json

from farl_edge.train.finetune import load_config, run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="JSON recipe in train/configs")
    p.add_argument("--init", help="start from this checkpoint (official FaRL .pth, FaRL trainer file, or ours)")
    p.add_argument("--output", help="run folder (overrides the recipe)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    cfg = load_config(args.config, {"init": args.init, "output": args.output, "epochs": args.epochs,
                                    "max_steps": args.max_steps, "threads": args.threads})
    print(json.dumps(run(cfg), indent=2))


if __name__ == "__main__":
    main()
