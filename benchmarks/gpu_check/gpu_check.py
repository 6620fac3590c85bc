"""Staging for the device runs of ``farl-edge bench`` (``run.sh``): faces and the project wheel.

Measuring is ``farl-edge bench --preset gpu`` (or ``--preset mac``); this script measures nothing.
The GPU machine has no network and no ``../shared/data``, so ``--stage N`` copies, from the shared
data, N evenly spaced faces of each split the bench uses — ``300w/test-helen`` (alignment
evaluation), ``300w/train`` (alignment / backbone calibration), ``celebamask-hq/val`` (parsing
evaluation), ``celebamask-hq/train`` (parsing calibration) — into ``data/`` beside this script,
laid out like ``../shared/data`` (so ``farl-edge bench --data-root benchmarks/gpu_check/data``
finds them; ``run.sh`` passes it), and builds the project wheel into ``wheels/``. Both folders are
git-ignored: the faces are research-only data, carried to the device machine and never committed.

    python benchmarks/gpu_check/gpu_check.py --stage 16            # faces + wheel
    python benchmarks/gpu_check/gpu_check.py --stage 16 --no-wheel # faces only
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# split → how a face is stored: (glob of its image, [files that belong to it, from the image path])
SPLITS = {
    ("300w", "test-helen"): ("*.jpg", lambda img: [img, img.with_suffix(".pts")]),
    ("300w", "train"): ("*.jpg", lambda img: [img, img.with_suffix(".pts")]),
    ("celebamask-hq", "val"): ("images/*.jpg", lambda img: [img, img.parent.parent / "masks" / f"{img.stem}.png"]),
    ("celebamask-hq", "train"): ("images/*.jpg", lambda img: [img, img.parent.parent / "masks" / f"{img.stem}.png"]),
}


def stage_faces(count: int, dest: Path = HERE / "data", source: Path = SHARED_DATA) -> dict[str, int]:
    """Copy ``count`` evenly spaced faces of every split in :data:`SPLITS` from ``source`` to ``dest``
    (same layout); returns {split: faces copied}. Splits missing from ``source`` are left out."""
    if count < 1:
        raise ValueError("--stage takes a positive number of faces")
    shutil.rmtree(dest, ignore_errors=True)
    copied = {}
    for parts, (pattern, members) in SPLITS.items():
        src = source.joinpath(*parts)
        images = sorted(src.glob(pattern))
        if not images:
            continue
        picked = sorted({int(i) for i in np.linspace(0, len(images) - 1, min(count, len(images))).round()})
        for i in picked:
            for f in members(images[i]):
                if f.is_file():
                    target = dest.joinpath(*parts) / f.relative_to(src)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, target)
        copied["/".join(parts)] = len(picked)
    if not copied:
        raise SystemExit(f"no faces found under {source}")
    return copied


def build_wheel(dest: Path = HERE / "wheels") -> list[str]:
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dest), str(ROOT)], check=True)
    return [p.name for p in dest.glob("*.whl")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", type=int, metavar="N", required=True,
                   help="copy N faces of each split into data/ and build the wheel into wheels/")
    p.add_argument("--no-wheel", action="store_true", help="faces only")
    p.add_argument("--dest", default=str(HERE / "data"), help="where the faces go (default data/ beside this)")
    p.add_argument("--source", default=str(SHARED_DATA), help="the shared data folder (default ../shared/data)")
    args = p.parse_args(argv)
    copied = stage_faces(args.stage, Path(args.dest), Path(args.source))
    print(f"staged into {args.dest}: " + ", ".join(f"{k} {v}" for k, v in copied.items()))
    if not args.no_wheel:
        print(f"built {build_wheel()} into {HERE / 'wheels'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
