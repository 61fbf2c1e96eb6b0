"""CT check on synthetic phantom patients (no external data): the 4D-Lung protocol in 2-D.

    python -m bench.phantom [--weights ct_phantom] [--cases 8]

Each case (``imaging.phantom.make_case``, seeds 1000.. — never the training stream) has a prior
visit and follow-ups in which the lesion moves, shrinks and deforms. For every follow-up slice
whose ground truth holds the lesion, the prior is the prior visit's lesion slice nearest in z
(image windowed [-910, 590] HU, grey -> 3 channels); Dice per slice -> visit -> case -> mean.
Methods: direct transfer, PerSAM, the prior box (the prior slice's contour box as a box prompt)
and P²SAM with retrieval at the model card's part ranges, as jobs run it (bench.common.make_engine:
the product's ModelPool; ``--set pos_range=1,3`` for the paper's CT ranges). The LAST line is ``p2sam_dice <mean>``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .common import dice, make_engine, parse_overrides, table

FIRST_SEED = 1000


def evaluate_case(engine, seed: int, methods: list[str]) -> dict[str, float]:
    """Mean over follow-up visits of the mean Dice over their lesion slices, per method."""
    import imaging
    from imaging.phantom import make_case

    case = make_case(seed)
    prior_vol, prior_gtv = case.images[0], case.gtv[0]
    lesion_z = [z for z in range(prior_gtv.shape[0]) if prior_gtv[z].any()]
    priors = {}
    visits: dict[str, list[float]] = {m: [] for m in methods}
    for vol, gtv in zip(case.images[1:], case.gtv[1:]):
        per_slice: dict[str, list[float]] = {m: [] for m in methods}
        for z in (z for z in range(gtv.shape[0]) if gtv[z].any()):
            pz = min(lesion_z, key=lambda k: (abs(k - z), k))
            if pz not in priors:
                priors[pz] = engine.set_prior(imaging.to_model_input(prior_vol, pz), prior_gtv[pz])
            enc = engine.encode(imaging.to_model_input(vol, z))
            for m in methods:
                per_slice[m].append(dice(engine.segment(enc, priors[pz], method=m).mask, gtv[z]))
        for m in methods:
            if per_slice[m]:
                visits[m].append(float(np.mean(per_slice[m])))
    return {m: float(np.mean(v)) for m, v in visits.items() if v}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.phantom", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="ct_phantom")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        import imaging.phantom  # noqa: F401
    except ImportError as exc:
        print(f"skipped: imaging.phantom is not available ({exc})")
        return 0
    engine, model = make_engine(args.weights, args.threads, **parse_overrides(args.set))
    methods = ["direct", "persam", "box", "p2sam"]
    rows, scores = [], {m: [] for m in methods}
    for seed in range(FIRST_SEED, FIRST_SEED + args.cases):
        res = evaluate_case(engine, seed, methods)
        if not res:
            continue
        rows.append([f"case {seed}"] + [res[m] for m in methods])
        for m in methods:
            scores[m].append(res[m])
    means = {m: float(np.mean(v)) for m, v in scores.items()}
    rows.append(["mean"] + [means[m] for m in methods])
    ranges = f"{engine.config.pos_range[0]}-{engine.config.pos_range[1]} x {engine.config.neg_range[0]}-{engine.config.neg_range[1]} parts"
    print(f"phantom CT check: {model} ({ranges}); prior = visit 1, follow-ups = visits 2-3, lesion slices scored")
    print(table(["case", "direct", "PerSAM", "prior box", "P²SAM"], rows))
    print(f"p2sam_dice {means['p2sam']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
