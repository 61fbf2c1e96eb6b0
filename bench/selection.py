"""Candidate selection study: which rule picks P²SAM's best candidate on patients' sequences?

    python -m bench.selection --data ../shared/data/cvc-clinicdb [--weights kvasir] [--set KEY=VALUE ...]

For every scored frame (CVC-ClinicDB protocol: prior = 3rd frame, frames 4.. scored) the engine
produces its retrieval candidates once (1-5 positives x 1-3 negatives, plus the direct
no-prompt prediction); each selection rule then picks one candidate from the same set, so the
rules are compared on identical candidates. Rules (lower score wins unless noted):

- ``w_sq``: Wasserstein, squared Euclidean on raw features (reference code), prompted only;
- ``w_cos``: Wasserstein, cosine cost (paper eq. 5), prompted only;
- ``*+d``: the same with the direct prediction as one more candidate;
- ``iou``: highest predicted IoU;  ``w_cos-iou``: W_cos - 0.1 x predicted IoU;
- ``proto``: cosine distance between the mean foreground features (prior vs candidate);
- ``consensus``: the candidate with the highest mean Dice to the other candidates (medoid);
- ``w_cos+area``: W_cos + 0.05 x |log(area / prior area)| (the structure's size changes slowly);
- ``w_2side``: W(prior fg, candidate fg) + W(prior bg, candidate bg) (cosine): a candidate that
  leaves structure-like features outside its mask is penalised too;
- ``linear``: a per-patient logistic regression on the prior's grid features (fg vs bg) maps the
  target; the candidate with the highest soft Dice against that map wins;
- ``direct``: always the no-prompt prediction (for reference);
- ``vote`` / ``vote+d``: not a pick but a fusion: the mean probability of the prompted
  candidates (with the direct one), thresholded at 0.5; ``wvote+d``: weighted by
  softmax(-W_cos / 0.02) (the retrieval posterior);
- ``oracle``: the best candidate per frame (an upper bound, not a method).

Prints mean Dice per rule (per frame -> sequence -> mean) and how often each rule matches the
oracle. Analysis only: the product's choice lives in ``models.engine.P2SAMConfig``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from models.decoder import logits_on_grid, upscale_logits
from models.retrieval import wasserstein

from .common import DEFAULT_WEIGHTS, dice, log, make_engine, parse_overrides, read_mask, read_rgb, table
from .quality import PRIOR_INDEX, PRODUCT_CONFIG, UNSCORED, find_sequences

RULES = ["direct", "w_sq", "w_cos", "w_sq+d", "w_cos+d", "iou", "w_cos-iou", "proto", "consensus", "consensus+d", "w_cos+area", "w_2side", "w_2side+d", "linear", "linear+d", "vote", "vote+d", "wvote+d", "oracle"]
FUSED = ("vote", "vote+d", "wvote+d")
TWO_SIDED = False  # --two-sided


def _pick(scores: list[float], allowed: list[bool]) -> int:
    best, best_s = 0, math.inf
    for i, (s, ok) in enumerate(zip(scores, allowed)):
        if ok and s < best_s:
            best, best_s = i, s
    return best


def prior_classifier(prior):
    """Logistic regression on the prior's grid features (fg = 1, bg = 0), L2-normalised inputs."""
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([prior.fg_features, prior.bg_features]).float()
    x = (x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)).cpu().numpy()
    y = np.r_[np.ones(len(prior.fg_features)), np.zeros(len(prior.bg_features))]
    return LogisticRegression(C=1.0, class_weight="balanced", max_iter=500).fit(x, y)


def frame_choices(engine, prior, prior_area: float, enc, clf=None) -> tuple[list[np.ndarray], dict[str, int], dict]:
    """Candidate masks (original size), the index each rule picks (fused masks are appended to
    the list and picked by their index) and the per-candidate signals (for ``--dump``)."""
    res = engine.segment(enc, prior, method="p2sam")
    cands = res.candidates
    n = len(cands)
    direct = [c.n_pos == 0 for c in cands]
    prompted = [not d for d in direct]
    everyone = [True] * n
    logits = upscale_logits(engine.sam, res.candidate_logits, enc.input_size, enc.original_size)[:, 0]
    masks = [m.cpu().numpy() for m in logits > engine.sam.mask_threshold]
    on_grid = logits_on_grid(res.candidate_logits, engine.grid) > 0
    feats = enc.features[0].permute(1, 2, 0)
    w_sq = [c.distance for c in cands]
    w_cos = [wasserstein(prior.fg_features, feats[on_grid[i]], "cosine") for i in range(n)]
    iou = [c.iou_pred for c in cands]
    mean_r = prior.fg_features.mean(0)
    proto = []
    for i in range(n):
        sel = feats[on_grid[i]]
        proto.append(math.inf if len(sel) == 0 else float(1 - torch.cosine_similarity(mean_r, sel.mean(0), dim=0)))
    agree = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            agree[i, j] = agree[j, i] = dice(masks[i], masks[j])
    areas = [m.sum() for m in masks]
    area_term = [abs(math.log(max(a, 1) / max(prior_area, 1))) for a in areas]

    def consensus(allowed):
        idx = [i for i in range(n) if allowed[i]]
        return [(-agree[i, idx].sum() / max(1, len(idx) - 1)) if allowed[i] and areas[i] > 0 else math.inf for i in range(n)]

    if TWO_SIDED:
        w_bg = [wasserstein(prior.bg_features, feats[~on_grid[i]], "cosine") if bool((~on_grid[i]).any()) else math.inf for i in range(n)]
    else:  # background transport is ~1000 x 1000 cells per candidate: off unless asked for
        w_bg = [0.0] * n
    w_2side = [a + b for a, b in zip(w_cos, w_bg)]
    if clf is not None:
        flat = feats.reshape(-1, feats.shape[-1]).float()
        flat = (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).cpu().numpy()
        prob = torch.from_numpy(clf.predict_proba(flat)[:, 1]).float()
        grid_masks = on_grid.reshape(n, -1).float().cpu()
        soft = [-(2 * (g * prob).sum() / (g.sum() + prob.sum() + 1e-6)).item() for g in grid_masks]
    else:
        soft = [0.0] * n
    prob = torch.sigmoid(logits)
    weights = torch.softmax(-torch.tensor([w if math.isfinite(w) else 1e9 for w in w_cos]) / 0.02, 0)
    fused = {
        "vote": prob[torch.tensor(prompted)].mean(0) > 0.5,
        "vote+d": prob.mean(0) > 0.5,
        "wvote+d": (weights[:, None, None] * prob).sum(0) > 0.5,
    }
    signals = {
        "n_pos": [c.n_pos for c in cands], "n_neg": [c.n_neg for c in cands], "w_sq": w_sq, "w_cos": w_cos,
        "w_bg": w_bg, "iou": iou, "proto": proto, "area": [float(a) for a in areas], "prior_area": prior_area,
        "agree": agree.tolist(), "linear": [-v for v in soft], "cells": [c.cells for c in cands],
    }
    picks = {}
    for name, m in fused.items():
        picks[name] = len(masks)
        masks.append(m.cpu().numpy())
    picks |= {
        "direct": direct.index(True) if any(direct) else 0,
        "w_2side": _pick(w_2side, prompted),
        "w_2side+d": _pick(w_2side, everyone),
        "linear": _pick(soft, prompted),
        "linear+d": _pick(soft, everyone),
        "w_sq": _pick(w_sq, prompted),
        "w_cos": _pick(w_cos, prompted),
        "w_sq+d": _pick(w_sq, everyone),
        "w_cos+d": _pick(w_cos, everyone),
        "iou": _pick([-v for v in iou], everyone),
        "w_cos-iou": _pick([w - 0.1 * v for w, v in zip(w_cos, iou)], everyone),
        "proto": _pick(proto, everyone),
        "consensus": _pick(consensus(prompted), prompted),
        "consensus+d": _pick(consensus(everyone), everyone),
        "w_cos+area": _pick([w + 0.05 * a for w, a in zip(w_cos, area_term)], everyone),
    }
    return masks, picks, signals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.selection", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--sequences", nargs="*", default=None, help="only these sequence folders")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--two-sided", action="store_true", help="also compute the (slow) background transport for w_2side")
    parser.add_argument("--dump", default=None, help="write every frame's candidate signals and Dice (JSON) for offline analysis")
    args = parser.parse_args(argv)
    global TWO_SIDED
    TWO_SIDED = args.two_sided
    sequences = find_sequences(args.data) if Path(args.data).is_dir() else {}
    if args.sequences:
        sequences = {k: v for k, v in sequences.items() if k in args.sequences}
    if not sequences:
        print(f"skipped: no sequence folders under {args.data}")
        return 0
    config = {**PRODUCT_CONFIG, **parse_overrides(args.set), "direct_candidate": True}
    engine, model = make_engine(args.weights, args.threads, **config)
    per_seq: dict[str, dict[str, list[float]]] = {}
    hits = {r: 0 for r in RULES}
    frames_total = 0
    records: list[dict] = []
    for name, frames in sequences.items():
        if len(frames) <= UNSCORED:
            continue
        prior_mask = read_mask(frames[PRIOR_INDEX].mask)
        prior = engine.set_prior(engine.encode(read_rgb(frames[PRIOR_INDEX].image)), prior_mask)
        scores = {r: [] for r in RULES}
        clf = prior_classifier(prior)
        for f in frames[UNSCORED:]:
            enc, truth = engine.encode(read_rgb(f.image)), read_mask(f.mask)
            masks, picks, signals = frame_choices(engine, prior, float(prior_mask.sum()), enc, clf)
            d = [dice(m, truth) for m in masks]
            records.append({"sequence": name, "frame": f.number, "dice": d[: len(signals["iou"])], "fused": {k: d[picks[k]] for k in FUSED}, **signals})
            picks["oracle"] = int(np.argmax(d[: len(masks) - len(FUSED)]))
            for r in RULES:
                scores[r].append(d[picks[r]])
                hits[r] += int(d[picks[r]] >= d[picks["oracle"]] - 1e-9)
            frames_total += 1
        per_seq[name] = scores
        log(f"{name}: " + " ".join(f"{r}={np.mean(v):.3f}" for r, v in scores.items()))
    if args.dump:
        import json

        Path(args.dump).write_text(json.dumps(records))
    means = {r: float(np.mean([np.mean(s[r]) for s in per_seq.values()])) for r in RULES}
    print(f"selection study: {model}; {len(per_seq)} sequences, {frames_total} scored frames; engine {config}")
    print(table(["rule", "mean Dice", "picks oracle"], [[r, means[r], f"{hits[r] / max(1, frames_total):.0%}"] for r in RULES]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
