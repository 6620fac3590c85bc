"""Ship a trained run as package weights: fp16 safetensors + model card in farl_edge/data/weights.

    python train/ship.py runs/small-300w [--reference-limit 40]

The card records data, recipe, the command to reproduce, training time, metrics on the whole
validation set and on a fixed subset (the first N faces, which the test suite re-measures), GMACs,
and the data terms.
"""
import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from farl_edge.checkpoint import read_card, save_checkpoint
from farl_edge.datasets import open_dataset
from farl_edge.evaluate import evaluate
from farl_edge.models import create_model
from farl_edge.models.complexity import count_macs
from farl_edge.models.predictor import TorchPredictor

WEIGHTS = Path(__file__).resolve().parents[1] / "farl_edge" / "data" / "weights"
DATA_TERMS = ("Trained on research / non-commercial face data (300-W, CelebAMask-HQ subsets): "
              "the weights inherit those terms; not for commercial use.")


def stage_seconds(recipe: str) -> float:
    """Training time of an earlier stage, from its run folder (0 when that run is not here)."""
    result = Path(json.loads(Path(recipe).read_text())["output"]) / "result.json"
    return json.loads(result.read_text()).get("train_seconds", 0.0) if result.is_file() else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="training output folder (holds <model>.safetensors and result.json)")
    p.add_argument("--recipe", help="recipe the run used (default: recorded in the run's card)")
    p.add_argument("--reference-limit", type=int, default=40, help="faces in the fixed subset the tests re-measure")
    args = p.parse_args()
    trained = next(args.run.glob("*.safetensors"))
    card = read_card(trained)
    name = card["model"]
    training = card.get("training", {})
    result = json.loads((args.run / "result.json").read_text())
    out = WEIGHTS / f"{name}.safetensors"
    # Measure the fp16 weights users get, not the fp32 ones training wrote.
    tmp = args.run / f"{name}.fp16.safetensors"
    save_checkpoint(create_model(name, checkpoint=trained), tmp, card=card, dtype=torch.float16, sidecar=False)
    model = create_model(name, checkpoint=tmp)
    val = open_dataset(training["val_data"])
    full = evaluate(TorchPredictor(model), val)
    subset = evaluate(TorchPredictor(model), val, limit=args.reference_limit)
    recipe = args.recipe or training.get("recipe")
    # A recipe that continues another run names it in "after": the command chains every stage.
    stages, step = [], recipe
    while step:
        stages.insert(0, step)
        step = json.loads(Path(step).read_text()).get("after") if Path(step).exists() else None
    stages = stages or ["train/configs/<recipe>.json"]
    ship_card = {
        **card,
        "data": {"train": training["train_data"], "validation": training["val_data"]},
        "recipe": {k: v for k, v in training.items() if k not in ("train_data", "val_data")},
        "reproduce": " && ".join([*(f"torchrun --nproc_per_node 1 train/finetune.py --config {r}" for r in stages),
                                  f"python train/ship.py {args.run} --recipe {recipe}"]),
        "training_time_s": round(sum(stage_seconds(r) for r in stages[:-1]) + (result.get("train_seconds") or 0), 1),
        "training_machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (CPU)",
        "metrics": {"validation": full, "reference_subset": {"limit": args.reference_limit, **subset}},
        "gmacs": count_macs(model, model.cfg.crop_size),
        "license": DATA_TERMS,
    }
    ship_card.pop("history", None)
    ship_card["history"] = card.get("history", [])
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out, card=ship_card, dtype=torch.float16)
    tmp.unlink()
    print(json.dumps(ship_card["metrics"], indent=2))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
