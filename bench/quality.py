"""Quality benchmark on patients' video sequences (the CVC-ClinicDB protocol of the P²SAM paper).

    python -m bench.quality --data ../shared/data/cvc-clinicdb [--weights kvasir] [--json FILE]

Layout: one sub-folder per sequence, frames ``<n>.png`` with masks ``<n>_mask.png`` (sorted by
the number n). Per sequence the prior is the 3rd frame (image + mask); every frame is predicted
and the first 3 are not scored; Dice per frame -> mean per sequence -> mean over sequences.
All methods run on the same backbone and on the same cached encoding of each frame (each frame
is encoded once): direct transfer (no prompt), PerSAM, the prior box (the prior mask's bounding
box as a box prompt on every frame, what a MedSAM user does today), P²SAM at a fixed part count
n = 1..5 (no retrieval) and P²SAM with retrieval (1-5 positives x 1-3 negatives). With a picture
registration (``--registration affine``, the default, or ``rigid``; ``off`` drops these columns)
the prior frame is registered to each target (``imaging.register_pictures``), its mask mapped onto
it, and two more columns are run: the registered box (the mapped mask's box as the box prompt)
and P²SAM + location (the registration-guided candidates and selection rule of
models/candidates.py; the retrieval column is then read from the same run: plain retrieval's
choice among its point candidates, the same masks as a separate run). Prints a table like the
paper's Table 6; the LAST line is ``p2sam_dice <mean Dice with retrieval>``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imaging import register_pictures
from models import P2SAMEngine
from models.regraf import RegrafConfig
from p2sam.modelpool import RECOMMENDED_ENGINE

from .common import DEFAULT_WEIGHTS, dice, log, make_engine, parse_overrides, read_mask, read_rgb, table

PRIOR_INDEX = 2  # the 3rd frame of each sequence
UNSCORED = 3  # the first 3 frames are not scored
FIXED_NS = (1, 2, 3, 4, 5)
PRODUCT_CONFIG: dict = dict(RECOMMENDED_ENGINE)  # what the shipped models' cards recommend
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class Frame:
    number: int
    image: Path
    mask: Path


def sequence_frames(folder: str | Path) -> list[Frame]:
    """Frames ``<n>.<ext>`` that have a ``<n>_mask.<ext>``, sorted numerically by n."""
    folder = Path(folder)
    masks = {p.stem[: -len("_mask")]: p for p in folder.iterdir() if p.stem.endswith("_mask") and p.suffix.lower() in FRAME_SUFFIXES}
    frames = [
        Frame(int(p.stem), p, masks[p.stem])
        for p in folder.iterdir()
        if p.suffix.lower() in FRAME_SUFFIXES and re.fullmatch(r"\d+", p.stem) and p.stem in masks
    ]
    return sorted(frames, key=lambda f: f.number)


def find_sequences(root: str | Path) -> dict[str, list[Frame]]:
    """Every sub-folder of ``root`` holding frames of that layout (name -> sorted frames)."""
    root = Path(root)
    out = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        frames = sequence_frames(sub)
        if frames:
            out[sub.name] = frames
    return out


def method_names(regraf: bool = False, location: bool = False) -> list[str]:
    return (["direct", "persam", "prior_box"] + (["registered_box"] if location else []) + [f"fixed{n}" for n in FIXED_NS]
            + ["p2sam"] + (["p2sam_location"] if location else []) + (["regraf"] if regraf else []))


def evaluate_sequence(engine: P2SAMEngine, frames: list[Frame], oracle: bool = False, regraf: P2SAMEngine | None = None,
                      frame_step: int = 1, registration: str | None = None) -> dict:
    """Dice of every method on the scored frames of one sequence.

    Returns ``{"frames": [n, ...], "dice": {method: [per scored frame]}, "chosen": [(n_pos, n_neg)],
    "seconds": {"p2sam": [...], "regraf": [...]}}``; with ``oracle``, also the best retrieval
    candidate per frame (``"oracle"``, a diagnostic); with ``regraf`` (the same engine with ReGRAF
    on), P²SAM + ReGRAF (``"regraf"``) and its wall time per target next to plain P²SAM's. With
    ``frame_step`` k > 1 only every k-th scored frame (4th, 4+k-th, ...) is predicted and scored: a
    cheaper estimate of the same protocol (each frame is segmented from the prior alone). With
    ``registration`` (``affine`` | ``rigid``), also ``registered_box`` and ``p2sam_location`` (see
    the module docstring), and per frame the registration's method and NCC (``"registration"``).
    """
    if frame_step > 1:  # the prior frame, then every k-th scored frame; the unscored ones are not predicted
        picked = [i for i in range(UNSCORED, len(frames)) if (i - UNSCORED) % frame_step == 0]
        frames = frames[:UNSCORED] if not picked else [frames[PRIOR_INDEX]] * UNSCORED + [frames[i] for i in picked]
    encoded = [engine.encode(read_rgb(f.image)) if i >= PRIOR_INDEX or frame_step == 1 else None for i, f in enumerate(frames)]
    truths = [read_mask(f.mask) for f in frames]
    prior = engine.set_prior(encoded[PRIOR_INDEX], truths[PRIOR_INDEX])
    names = method_names(regraf is not None, registration is not None)
    scores: dict[str, list[float]] = {m: [] for m in names + (["oracle"] if oracle else [])}
    seconds: dict[str, list[float]] = {"p2sam": [], "regraf": [], "p2sam_location": []}
    scored, chosen, registered = [], [], []
    located = engine.with_config(location=True) if registration else None
    prior_image = read_rgb(frames[PRIOR_INDEX].image) if registration else None
    for i, (enc, truth) in enumerate(zip(encoded, truths)):
        if frame_step > 1 and i < UNSCORED:
            continue
        results = {}
        if located is not None:
            t = time.perf_counter()
            reg = register_pictures(prior_image, read_rgb(frames[i].image), registration)
            loc = reg.map_mask(truths[PRIOR_INDEX])
            results["p2sam_location"] = located.segment(enc, prior, method="p2sam", location=loc)
            seconds["p2sam_location"].append(time.perf_counter() - t)
            results["registered_box"] = engine.segment(enc, prior, method="box", location=loc)
            registered.append({"method": reg.method, "ncc_before": reg.ncc_before, "ncc_after": reg.ncc_after})
        if located is not None and engine.config.prune_k == 0 and regraf is None:  # the same masks as a plain run: read them off
            # (with --regraf, plain P²SAM runs on its own: its time per target is compared)
            res = results["p2sam_location"]
            results["p2sam"] = _RetrievalView(res.candidate_mask(engine.sam, res.retrieval_chosen, enc.input_size),
                                             None if res.retrieval_chosen is None else res.candidates[res.retrieval_chosen])
        else:
            t = time.perf_counter()
            results["p2sam"] = engine.segment(enc, prior, method="p2sam")
            seconds["p2sam"].append(time.perf_counter() - t)
        results["direct"] = engine.segment(enc, None, method="direct")
        results["persam"] = engine.segment(enc, prior, method="persam")
        results["prior_box"] = engine.segment(enc, prior, method="box")
        if regraf is not None:
            t = time.perf_counter()
            results["regraf"] = regraf.segment(enc, prior, method="p2sam")
            seconds["regraf"].append(time.perf_counter() - t)
        for n in FIXED_NS:
            if prior.parts(n) is not None:
                results[f"fixed{n}"] = engine.segment(enc, prior, method="fixed", n_pos=n)
        if i < UNSCORED:  # predicted (the protocol runs every frame) but not scored
            continue
        scored.append(frames[i].number)
        for name in names:
            # a part count the prior cannot provide scores as an empty prediction
            scores[name].append(dice(results[name].mask, truth) if name in results else dice(np.zeros_like(truth), truth))
        best = results["p2sam"].best
        chosen.append((best.n_pos, best.n_neg) if best else None)
        if oracle:
            scores["oracle"].append(_oracle(engine, results.get("p2sam_location", results["p2sam"]), enc, truth))
    return {"frames": scored, "dice": scores, "chosen": chosen, "seconds": seconds, "registration": registered[-len(scored):] if scored else []}


@dataclass
class _RetrievalView:
    """Plain retrieval's answer read off a P²SAM + location run (its choice among the point candidates)."""

    mask: np.ndarray
    best: object


def _choice(best):
    """(n_pos, n_neg) of a chosen candidate (None when nothing was found)."""
    return None if best is None else (best.n_pos, best.n_neg)


def compare_sequence(reference: P2SAMEngine, pruned: P2SAMEngine, frames: list[Frame], every: int = 1) -> dict:
    """P²SAM with retrieval as the reference runs it (every candidate fully cascaded) and pruned,
    on the same encodings: Dice of each, whether they chose the same candidate, time per target,
    and for every k the choice that pruning to k would make (derived: the pruned run's step (a)
    scores rank the candidates, the reference's final scores pick among the best k). Only the
    prior and the scored frames (every ``every``-th) are encoded."""
    scored = list(range(UNSCORED, len(frames)))[::max(1, every)]
    prior = reference.set_prior(reference.encode(read_rgb(frames[PRIOR_INDEX].image)), read_mask(frames[PRIOR_INDEX].mask))
    out: dict = {"frames": [], "dice": {"reference": [], "pruned": []}, "same": [], "seconds": {"reference": [], "pruned": []},
                 "derived": {}}
    for i in scored:
        enc, truth = reference.encode(read_rgb(frames[i].image)), read_mask(frames[i].mask)
        res = {}
        for name, eng in (("reference", reference), ("pruned", pruned)):
            t = time.perf_counter()
            res[name] = eng.segment(enc, prior, method="p2sam")
            out["seconds"][name].append(time.perf_counter() - t)
            out["dice"][name].append(dice(res[name].mask, truth))
        r, p = res["reference"], res["pruned"]
        out["same"].append(_choice(r.best) == _choice(p.best))
        out["frames"].append(frames[i].number)
        steps = [c.step_a_score for c in p.candidates]
        if all(v is not None for v in steps):
            order = sorted(range(len(steps)), key=lambda j: (steps[j], j))
            for k in range(1, len(steps) + 1):
                top = order[:k]
                pick = min(top, key=lambda j: (r.candidates[j].score, j))
                pick = None if math.isinf(r.candidates[pick].score) else pick
                d = out["derived"].setdefault(k, {"same": [], "dice": []})
                d["same"].append(pick == r.chosen)
                if pick is None:
                    d["dice"].append(dice(np.zeros_like(truth), truth))
                else:
                    from models.decoder import upscale_logits

                    m = upscale_logits(reference.sam, r.candidate_logits[pick : pick + 1], enc.input_size, enc.original_size)[0, 0]
                    d["dice"].append(dice((m > reference.sam.mask_threshold).cpu().numpy(), truth))
    return out


def print_comparison(per_sequence: dict[str, dict], model: str, prune_k: int, every: int) -> dict:
    rows, seq = [], {}
    for name, r in per_sequence.items():
        if not r["frames"]:
            continue
        dr, dp = float(np.mean(r["dice"]["reference"])), float(np.mean(r["dice"]["pruned"]))
        seq[name] = (dr, dp)
        rows.append([name, len(r["frames"]), dr, dp, 100 * (dp - dr), f"{100 * np.mean(r['same']):.1f}%"])
    mean_r = float(np.mean([v[0] for v in seq.values()]))
    mean_p = float(np.mean([v[1] for v in seq.values()]))
    same = [s for r in per_sequence.values() for s in r["same"]]
    n = len(same)
    rows.append(["mean", n, mean_r, mean_p, 100 * (mean_p - mean_r), f"{100 * np.mean(same):.1f}%"])
    print(f"pruned vs reference retrieval: {model}; prior = 3rd frame, frames 4.. scored"
          + (f" (every {every}th)" if every > 1 else "") + "; Dice per frame -> sequence -> mean")
    print(table(["sequence", "frames", "reference", f"pruned k={prune_k}", "diff (points)", "same choice"], rows))
    sec = {k: float(np.mean([s for r in per_sequence.values() for s in r["seconds"][k]])) for k in ("reference", "pruned")}
    print(f"time per target (P²SAM after the encoder): reference {sec['reference']:.3f} s, pruned {sec['pruned']:.3f} s "
          f"({sec['reference'] / max(sec['pruned'], 1e-9):.2f}x faster)")
    ks = sorted({k for r in per_sequence.values() for k in r["derived"]})
    if ks:
        drows = []
        for k in ks:
            same_k = [s for r in per_sequence.values() for s in r["derived"].get(k, {"same": []})["same"]]
            dice_k = [float(np.mean(r["derived"][k]["dice"])) for r in per_sequence.values() if r["derived"].get(k, {"dice": []})["dice"]]
            drows.append([f"k={k}", len(same_k), f"{100 * np.mean(same_k):.1f}%", float(np.mean(dice_k)), 100 * (float(np.mean(dice_k)) - mean_r)])
        print("derived for every k (the pruned run's step (a) ranking, the reference's final scores; prompts not shared):")
        print(table(["keep", "frames", "same choice", "mean Dice", "diff (points)"], drows))
    print(f"same_choice {np.mean(same):.4f}")
    print(f"dice_diff_points {100 * (mean_p - mean_r):+.2f}")
    return {"reference": mean_r, "pruned": mean_p, "same_choice": float(np.mean(same)), "frames": n, "seconds_per_target": sec,
            "per_sequence": {k: {"reference": v[0], "pruned": v[1]} for k, v in seq.items()}}


def _oracle(engine: P2SAMEngine, result, enc, truth: np.ndarray) -> float:
    from models.decoder import upscale_logits

    full = upscale_logits(engine.sam, result.candidate_logits, enc.input_size, enc.original_size)[:, 0] > engine.sam.mask_threshold
    return max(dice(m.cpu().numpy(), truth) for m in full)


def summarize(per_sequence: dict[str, dict]) -> dict:
    """Mean per sequence, then mean over sequences, in the JSON layout of the issue."""
    seq_means = {}
    for name, res in per_sequence.items():
        means = {m: float(np.mean(v)) for m, v in res["dice"].items() if v}
        entry = {
            "direct": means.get("direct"),
            "persam": means.get("persam"),
            "prior_box": means.get("prior_box"),
            "registered_box": means.get("registered_box"),
            "p2sam_fixed": {str(n): means.get(f"fixed{n}") for n in FIXED_NS},
            "p2sam_retrieval": means.get("p2sam"),
            "p2sam_location": means.get("p2sam_location"),
            "frames_scored": len(res["frames"]),
        }
        regs = res.get("registration") or []
        if regs:
            entry["registration_identity_share"] = float(np.mean([r["method"] == "identity" for r in regs]))
        for extra in ("oracle", "regraf"):
            if extra in means:
                entry[extra] = means[extra]
        seq_means[name] = entry
    out = over_sequences(seq_means)
    timed = {k: [s for r in per_sequence.values() for s in r.get("seconds", {}).get(k, [])] for k in ("p2sam", "regraf", "p2sam_location")}
    out["seconds_per_target"] = {k: float(np.mean(v)) for k, v in timed.items() if v}
    return out


def over_sequences(seq_means: dict[str, dict]) -> dict:
    """The mean over sequences (those with scored frames) of every method's per-sequence mean."""
    names = [n for n, e in seq_means.items() if e["frames_scored"]]

    def over(get):
        vals = [get(seq_means[n]) for n in names]
        return float(np.mean(vals)) if vals and None not in vals else (None if None in vals else float("nan"))

    out = {
        "direct": over(lambda e: e["direct"]),
        "persam": over(lambda e: e["persam"]),
        "prior_box": over(lambda e: e["prior_box"]),
        "registered_box": over(lambda e: e.get("registered_box")),
        "p2sam_fixed": {str(n): over(lambda e, n=n: e["p2sam_fixed"][str(n)]) for n in FIXED_NS},
        "p2sam_retrieval": over(lambda e: e["p2sam_retrieval"]),
        "p2sam_location": over(lambda e: e.get("p2sam_location")),
        "per_sequence": seq_means,
    }
    for extra in ("oracle", "regraf"):
        if names and all(extra in seq_means[n] for n in names):
            out["p2sam_regraf" if extra == "regraf" else extra] = over(lambda e, x=extra: e[x])
    return out


def print_table(summary: dict, model: str, chosen: Counter) -> None:
    oracle, regraf = "oracle" in summary, "p2sam_regraf" in summary
    located = summary.get("p2sam_location") is not None
    header = (["sequence", "frames", "direct", "PerSAM", "prior box"] + (["registered box"] if located else [])
              + [f"n={n}" for n in FIXED_NS] + ["P²SAM"] + (["P²SAM + location"] if located else [])
              + (["+ReGRAF"] if regraf else []) + (["oracle"] if oracle else []))

    def row(name, e, frames):
        vals = [e["direct"], e["persam"], e["prior_box"]] + ([e["registered_box"]] if located else [])
        vals += [e["p2sam_fixed"][str(n)] for n in FIXED_NS] + [e["p2sam_retrieval"]] + ([e["p2sam_location"]] if located else [])
        vals += [e.get("regraf", e.get("p2sam_regraf"))] if regraf else []
        return [name, frames] + vals + ([e["oracle"]] if oracle else [])

    rows = [row(n, e, e["frames_scored"]) for n, e in summary["per_sequence"].items()]
    rows.append(row("mean", summary, sum(e["frames_scored"] for e in summary["per_sequence"].values())))
    step = summary.get("frame_step", 1)
    scored = "frames 4.. scored" if step == 1 else f"every {step}th frame from the 4th scored (--frame-step {step}: an estimate)"
    print(f"quality: {model}; prior = 3rd frame, {scored}; Dice per frame -> sequence -> mean")
    print("columns: direct transfer | PerSAM | prior mask's box as box prompt" + (" | registered prior mask's box" if located else "")
          + " | P²SAM w/o retrieval at n parts | P²SAM with retrieval (1-5 pos x 1-3 neg)"
          + (" | P²SAM + location (registration-guided candidates, selection rule)" if located else ""))
    print(table(header, rows))
    fixed_best = max(summary["p2sam_fixed"].values())
    print(
        f"retrieval - direct {100 * (summary['p2sam_retrieval'] - summary['direct']):+.1f} points; "
        f"- PerSAM {100 * (summary['p2sam_retrieval'] - summary['persam']):+.1f}; - prior box {100 * (summary['p2sam_retrieval'] - summary['prior_box']):+.1f}; "
        f"- best fixed n {100 * (summary['p2sam_retrieval'] - fixed_best):+.1f}"
    )
    if located:
        goal = max(summary["p2sam_retrieval"], summary["registered_box"]) + 0.02
        print(f"P²SAM + location {summary['p2sam_location']:.3f} vs goal max(retrieval, registered box) + 0.02 = {goal:.3f}: "
              + ("met" if summary["p2sam_location"] >= goal else "not met"))
    if regraf:
        sec = summary["seconds_per_target"]
        print(f"ReGRAF (T=5, eta=1e-3, gamma=0.1): {100 * (summary['p2sam_regraf'] - summary['p2sam_retrieval']):+.2f} Dice points; "
              f"time per target {sec['regraf']:.3f} s vs {sec['p2sam']:.3f} s without ({sec['regraf'] / sec['p2sam']:.2f}x)")
    print("retrieval chose (n_pos, n_neg): " + ", ".join(f"{k}: {v}" for k, v in sorted(chosen.items(), key=lambda kv: str(kv[0]))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder of sequence folders (<n>.png + <n>_mask.png)")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help="weights file or bundled name (default: kvasir)")
    parser.add_argument("--json", default=None, help="write the numbers to this JSON file")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="engine settings (P2SAMConfig), e.g. cost=cosine")
    parser.add_argument("--oracle", action="store_true", help="also report the best retrieval candidate per frame (diagnostic)")
    parser.add_argument("--regraf", action="store_true", help="add a column: P²SAM with ReGRAF refinement (and its time per target)")
    parser.add_argument("--sequences", nargs="*", default=None, help="only these sequence folders")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--registration", choices=("affine", "rigid", "off"), default="affine",
                        help="picture registration for the registered box and P²SAM + location columns (off: no such columns)")
    parser.add_argument("--frame-step", type=int, default=1, metavar="K",
                        help="predict and score only every K-th scored frame of each sequence (a cheaper estimate; default 1: all)")
    parser.add_argument("--compare-reference", action="store_true",
                        help="only P²SAM with retrieval, pruned (--prune-k) vs the reference (every candidate fully cascaded)")
    parser.add_argument("--prune-k", type=int, default=3, help="with --compare-reference: candidates refined after cascade step (a)")
    parser.add_argument("--every", type=int, default=1, help="with --compare-reference: score every N-th frame only (a loaded machine)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="print the table of runs made on disjoint --sequences (their --json files) as one run")
    args = parser.parse_args(argv)
    if args.merge:
        return merge_runs(args.merge, args.json)
    root = Path(args.data)
    sequences = find_sequences(root) if root.is_dir() else {}
    if args.sequences:
        sequences = {k: v for k, v in sequences.items() if k in args.sequences}
    if not sequences:
        print(f"skipped: no sequence folders with <n>.png + <n>_mask.png frames under {root} (see ../shared/data/README.md)")
        return 0
    config = {**PRODUCT_CONFIG, **parse_overrides(args.set)}
    if args.compare_reference:
        reference, model = make_engine(args.weights, args.threads, **{**config, "prune_k": 0, "share_prompts": False})
        pruned = reference.with_config(prune_k=args.prune_k, share_prompts=True)
        per_sequence = {}
        for name, frames in sequences.items():
            if len(frames) <= UNSCORED:
                continue
            per_sequence[name] = compare_sequence(reference, pruned, frames, args.every)
            r = per_sequence[name]
            log(f"{name}: {len(r['frames'])} frames, reference {np.mean(r['dice']['reference']):.3f}, pruned {np.mean(r['dice']['pruned']):.3f}, "
                f"same {np.mean(r['same']):.2f}")
        summary = print_comparison(per_sequence, model, args.prune_k, args.every)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=1))
        return 0
    engine, model = make_engine(args.weights, args.threads, **config)
    regraf = engine.with_config(regraf=RegrafConfig()) if args.regraf else None
    per_sequence, chosen = {}, Counter()
    for name, frames in sequences.items():
        if len(frames) <= UNSCORED:
            log(f"{name}: {len(frames)} frames, nothing to score (the first {UNSCORED} are not scored)")
            continue
        per_sequence[name] = evaluate_sequence(engine, frames, oracle=args.oracle, regraf=regraf, frame_step=args.frame_step,
                                               registration=None if args.registration == "off" else args.registration)
        chosen.update(c for c in per_sequence[name]["chosen"] if c)
        log(f"{name}: {len(frames)} frames, " + ", ".join(f"{m} {np.mean(v):.3f}" for m, v in per_sequence[name]["dice"].items() if v))
    summary = summarize(per_sequence)
    summary["weights"], summary["config"] = model, {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    summary["chosen"] = {f"{k[0]},{k[1]}": v for k, v in chosen.items()}
    summary["frame_step"] = args.frame_step
    summary["registration"] = args.registration
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    print_table(summary, model, chosen)
    print(f"p2sam_dice {summary['p2sam_retrieval']:.4f}")
    return 0


def merge_runs(paths: list[str], out: str | None) -> int:
    """One table from runs on disjoint sequence subsets (same weights and settings)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    if len({(r["weights"], json.dumps(r["config"], sort_keys=True), r.get("frame_step", 1)) for r in runs}) != 1:
        print("cannot merge: the runs used different weights or engine settings", file=sys.stderr)
        return 2
    per_sequence = {name: entry for r in runs for name, entry in r["per_sequence"].items()}
    if len(per_sequence) != sum(len(r["per_sequence"]) for r in runs):
        print("cannot merge: a sequence appears in more than one run", file=sys.stderr)
        return 2
    summary = over_sequences(dict(sorted(per_sequence.items())))
    summary.update(weights=runs[0]["weights"], config=runs[0]["config"], frame_step=runs[0].get("frame_step", 1))
    scored = [sum(e["frames_scored"] for e in r["per_sequence"].values()) for r in runs]  # frame-weighted mean time
    seconds = sum(r.get("seconds_per_target", {}).get("p2sam", 0) * n for r, n in zip(runs, scored))
    summary["seconds_per_target"] = {"p2sam": seconds / max(1, sum(scored))}
    chosen: Counter = Counter()
    for r in runs:
        chosen.update({tuple(int(x) for x in k.split(",")): v for k, v in r.get("chosen", {}).items()})
    summary["chosen"] = {f"{k[0]},{k[1]}": v for k, v in chosen.items()}
    if out:
        Path(out).write_text(json.dumps(summary, indent=1))
    print_table(summary, summary["weights"], chosen)
    print(f"p2sam_dice {summary['p2sam_retrieval']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
