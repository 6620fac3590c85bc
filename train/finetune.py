"""Fine-tune a FaRL parsing or alignment model.

    torchrun --nproc_per_node 1 train/finetune.py --config train/configs/small-300w.json
    torchrun --nproc_per_node 8 train/finetune.py --config train/configs/b16-lapa-448.json \
        --init FaRL-Base-Patch16-LAIONFace20M-ep16.pth
    torchrun --nproc_per_node 8 train/finetune.py --config train/configs/distill-b16-lapa-448-edge.json \
        --teacher-checkpoint face_parsing.farl.lapa.main_ema_136500_jit191.pt --trust-torchscript   # edge head

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
    p.add_argument("--trust-torchscript", action="store_true",
                   help="allow TorchScript checkpoints (facer's .pt), which run code from the file when loaded")
    p.add_argument("--teacher-checkpoint", help="distillation: the full-head teacher's weights (overrides the recipe)")
    args = p.parse_args()
    cfg = load_config(args.config, {"init": args.init, "output": args.output, "epochs": args.epochs,
                                    "max_steps": args.max_steps, "threads": args.threads,
                                    "trust_torchscript": args.trust_torchscript or None})
    if args.teacher_checkpoint:
        if not cfg.get("teacher"):
            p.error(f"--teacher-checkpoint: {args.config} is not a distillation recipe (it has no 'teacher')")
        cfg["teacher"] = {**cfg["teacher"], "checkpoint": args.teacher_checkpoint}
    print(json.dumps(run(cfg), indent=2))


if __name__ == "__main__":
    main()
