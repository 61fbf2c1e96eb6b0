"""Internal check: no-prompt Dice of a backbone on the fixed internal test split.

    python -m bench.internal --data ../shared/data/kvasir-seg [--weights kvasir]

The test ids come from ``p2sam.datasets.split_ids`` (the same seeded 800/100/100 split the
training uses, so these 100 images were never trained on). Each image is segmented by the
engine's direct transfer (no prompt at all) at its original resolution. Prints a short table;
the LAST line is ``dice <mean Dice>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from p2sam.datasets import DatasetError, folder_pairs, load_pair, split_ids

from .common import DEFAULT_WEIGHTS, dice, log, make_engine, table


def evaluate(data: str | Path, weights: str, subset: str = "test", split_seed: int = 0, limit: int | None = None, threads: int = 2) -> dict:
    """Per-image no-prompt Dice on one split of a Kvasir-SEG-like folder."""
    pairs = folder_pairs(data)
    ids = getattr(split_ids(pairs, split_seed), subset)[:limit]
    engine, name = make_engine(weights, threads)
    scores = {}
    for i in ids:
        image, truth = load_pair(*pairs[i])
        scores[i] = dice(engine.segment(image, method="direct").mask, truth)
    return {"weights": name, "subset": subset, "scores": scores}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.internal", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="Kvasir-SEG-like folder (images/ + masks/)")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help="weights file or bundled name (default: kvasir)")
    parser.add_argument("--subset", choices=["test", "val", "train"], default="test")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"skipped: data folder {args.data} not found (see ../shared/data/README.md)")
        return 0
    try:
        result = evaluate(args.data, args.weights, args.subset, args.split_seed, args.limit, args.threads)
    except DatasetError as exc:
        log(f"error: {exc}")
        return 2
    values = np.array(list(result["scores"].values()))
    print(f"internal check: {result['weights']} on the {args.subset} split of {Path(args.data).name} (no prompt)")
    print(table(["images", "mean", "median", "p10", "min", ">=0.5"], [[len(values), float(values.mean()), float(np.median(values)), float(np.percentile(values, 10)), float(values.min()), f"{(values >= 0.5).mean():.0%}"]], first_width=6))
    print(f"dice {values.mean():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
