"""Rewrite the machine's absolute paths in committed results as the project sees them.

    python benchmarks/portable_results.py                      # benchmarks/results, this checkout, this home
    python benchmarks/portable_results.py --root /work/main --home /root benchmarks/results

Paths under the project root become relative to it (``benchmarks/results/…``), its siblings
``../shared/data/…``, the home folder ``~`` (the bench cache). Nothing is measured again; only text
changes (``.json``, ``.md``, ``.csv``, ``.txt``). ``farl-edge bench`` writes new results this way already
(:func:`farl_edge.bench.report.portable`); this is for results written before it did, or elsewhere.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from farl_edge.bench.report import portable_text, project_root
from farl_edge.fileio import atomic_write

SUFFIXES = (".json", ".md", ".csv", ".txt")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", help="default: benchmarks/results")
    p.add_argument("--root", help="the project root of the machine the results ran on (default: this checkout)")
    p.add_argument("--home", help="that machine's home folder (default: this one's)")
    args = p.parse_args(argv)
    root = Path(args.root) if args.root else project_root()
    folders = [Path(f) for f in args.folders] or [root / "benchmarks" / "results"]
    changed = 0
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.suffix not in SUFFIXES or not path.is_file():
                continue
            text = path.read_text()
            new = portable_text(text, root, args.home)
            if new != text:
                atomic_write(path, new)
                changed += 1
                print(f"rewrote {path}")
    print(f"{changed} file(s) rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
