"""CT check on synthetic phantom patients (no external data): the 4D-Lung protocol in 2-D.

    python -m bench.phantom [--weights ct_phantom] [--cases 8]

Each case (``imaging.phantom.make_case``, seeds 1000.. — never the training stream) has a prior
visit and follow-ups in which the lesion moves, shrinks and deforms. For every follow-up slice
whose ground truth holds the lesion, the prior is the prior visit's lesion slice nearest in z
(image windowed [-910, 590] HU, grey -> 3 channels); Dice per slice -> visit -> case -> mean.
Methods: direct transfer, PerSAM, the prior box (the prior slice's contour box as a box prompt)
and P²SAM with retrieval at the model card's part ranges, as jobs run it (bench.common.make_engine:
the product's ModelPool; ``--set pos_range=1,3`` for the paper's CT ranges); and, as the volume
pipeline does it (``imaging.register_rigid`` prior visit -> follow-up, the prior contour mapped
onto every follow-up slice), the registered box (the mapped contour's box on the slice) and P²SAM
+ location (models/candidates.py). False positives: on follow-up slices the pipeline segments
(the mapped contour's slices +- 1) whose truth is empty, the share with a non-empty mask, plain
retrieval vs P²SAM + location. The LAST line is ``p2sam_dice <mean>``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .common import dice, make_engine, parse_overrides, table

FIRST_SEED = 1000


METHODS = ["direct", "persam", "box", "registered_box", "p2sam", "p2sam_location"]


def evaluate_case(engine, seed: int, methods: list[str], empty: dict[str, list[bool]] | None = None) -> dict[str, float]:
    """Mean over follow-up visits of the mean Dice over their lesion slices, per method; with
    ``empty``, appends (per method p2sam / p2sam_location) whether each empty-truth slice the
    pipeline would segment got a non-empty mask."""
    import imaging
    from imaging.phantom import make_case

    case = make_case(seed)
    prior_vol, prior_gtv = case.images[0], case.gtv[0]
    lesion_z = [z for z in range(prior_gtv.shape[0]) if prior_gtv[z].any()]
    priors = {}
    visits: dict[str, list[float]] = {m: [] for m in methods}
    located = engine.with_config(location=True)
    for vol, gtv in zip(case.images[1:], case.gtv[1:]):
        per_slice: dict[str, list[float]] = {m: [] for m in methods}
        mapped = imaging.register_rigid(prior_vol, vol).map_mask(prior_gtv)
        on = [z for z in range(gtv.shape[0]) if mapped[z].any()]
        planned = set(range(max(0, min(on) - 1), min(gtv.shape[0], max(on) + 2))) if on else set()
        for z in sorted(z for z in range(gtv.shape[0]) if gtv[z].any() or (empty is not None and z in planned)):
            pz = min(lesion_z, key=lambda k: (abs(k - z), k))
            if pz not in priors:
                priors[pz] = engine.set_prior(imaging.to_model_input(prior_vol, pz), prior_gtv[pz])
            enc = engine.encode(imaging.to_model_input(vol, z))
            masks = {}
            for m in methods:
                if m == "p2sam_location":
                    masks[m] = located.segment(enc, priors[pz], method="p2sam", location=mapped[z]).mask
                elif m == "registered_box":  # no mapped contour on this slice: the prior box, as the pipeline has nothing better
                    masks[m] = engine.segment(enc, priors[pz], method="box", location=mapped[z] if mapped[z].any() else None).mask
                else:
                    masks[m] = engine.segment(enc, priors[pz], method=m).mask
            if not gtv[z].any():
                for m in ("p2sam", "p2sam_location"):
                    if m in masks:
                        empty.setdefault(m, []).append(bool(masks[m].any()))
                continue
            for m in methods:
                per_slice[m].append(dice(masks[m], gtv[z]))
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
    methods = METHODS
    rows, scores, empty = [], {m: [] for m in methods}, {}
    for seed in range(FIRST_SEED, FIRST_SEED + args.cases):
        res = evaluate_case(engine, seed, methods, empty)
        if not res:
            continue
        rows.append([f"case {seed}"] + [res[m] for m in methods])
        for m in methods:
            scores[m].append(res[m])
    means = {m: float(np.mean(v)) for m, v in scores.items()}
    rows.append(["mean"] + [means[m] for m in methods])
    ranges = f"{engine.config.pos_range[0]}-{engine.config.pos_range[1]} x {engine.config.neg_range[0]}-{engine.config.neg_range[1]} parts"
    print(f"phantom CT check: {model} ({ranges}); prior = visit 1, follow-ups = visits 2-3, lesion slices scored")
    print(table(["case", "direct", "PerSAM", "prior box", "registered box", "P²SAM", "P²SAM + location"], rows))
    if empty.get("p2sam"):
        print(f"false positives on {len(empty['p2sam'])} segmented slices with empty truth: P²SAM {np.mean(empty['p2sam']):.3f}, "
              f"P²SAM + location {np.mean(empty['p2sam_location']):.3f}")
    print(f"p2sam_dice {means['p2sam']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
