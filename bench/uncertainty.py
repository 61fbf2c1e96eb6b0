"""Does the uncertainty predict error? Measured on patients' video sequences (CVC-ClinicDB layout).

    python -m bench.uncertainty --data ../shared/data/cvc-clinicdb [--weights kvasir] [--k 16]

Protocol as bench.quality (prior = 3rd frame, the first 3 frames not scored). For every scored
frame: the deterministic P²SAM result (retrieval, the product configuration) and, per sampler,
K samples. Per sampler:
- spearman: rank correlation between disagreement (1 - mean pairwise Dice of the samples) and
  error (1 - Dice of the deterministic mask to the ground truth), over all scored frames;
- auroc_fail: how well disagreement detects failed frames (Dice < 0.5);
- ece: pixel-level expected calibration error of the mean probability (10 bins);
- dice_det / dice_mean: mean Dice (per sequence, then over sequences) of the deterministic mask
  and of the mean-probability mask (> 0.5): sampling must not cost Dice;
- seconds: sampling time per frame.
The Wasserstein distance of the chosen candidate is reported as a sampling-free error signal.
``--calibrate`` also prints the QC thresholds (Youden's J for failed frames) for p2sam/qc.py.
LAST line: ``spearman <best sampler's value>``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score, roc_curve

from models.uncertainty import SamplerConfig, sample

from .common import DEFAULT_WEIGHTS, dice, log, make_engine, parse_overrides, read_mask, read_rgb, table
from .quality import PRIOR_INDEX, PRODUCT_CONFIG, UNSCORED, find_sequences

FAIL_DICE = 0.5
BINS = 10


def mean_pairwise_dice(masks: np.ndarray) -> float:
    from p2sam.followup import mean_pairwise_dice as mpd

    return mpd(masks)


class Calibration:
    """Pixel-level reliability histogram, accumulated over frames."""

    def __init__(self) -> None:
        self.count = np.zeros(BINS)
        self.conf = np.zeros(BINS)
        self.hits = np.zeros(BINS)

    def add(self, prob: np.ndarray, truth: np.ndarray) -> None:
        idx = np.minimum((prob.ravel() * BINS).astype(int), BINS - 1)
        self.count += np.bincount(idx, minlength=BINS)
        self.conf += np.bincount(idx, weights=prob.ravel(), minlength=BINS)
        self.hits += np.bincount(idx, weights=truth.ravel().astype(float), minlength=BINS)

    def ece(self) -> float:
        n = self.count.sum()
        nz = self.count > 0
        return float(np.sum(np.abs(self.conf[nz] - self.hits[nz])) / n) if n else float("nan")


def _latent_head(weights: str):
    from models.checkpoints import file_sha256
    from models.latent import load_latent
    from models.registry import resolve_weights

    path = resolve_weights(weights)
    head_path = path.with_name(f"{path.stem}_latent.pt")
    return load_latent(head_path, base_sha256=file_sha256(path)) if head_path.is_file() else None


def run(data: str, weights: str, samplers: list[SamplerConfig], overrides: dict, limit: int | None = None) -> dict:
    engine, name = make_engine(weights, **{**PRODUCT_CONFIG, **overrides})
    head = _latent_head(weights) if any(s.kind == "latent" for s in samplers) else None
    sequences = find_sequences(data)
    if limit:
        sequences = dict(list(sequences.items())[:limit])
    per = {label(s): {"disagree": [], "mean_dice": {}, "calib": Calibration(), "seconds": []} for s in samplers}
    det = {"error": [], "dice": {}, "distance": []}
    for seq, frames in sequences.items():
        log(f"{seq}: {len(frames)} frames")
        encoded = [engine.encode(read_rgb(f.image)) for f in frames]
        truths = [read_mask(f.mask) for f in frames]
        prior = engine.set_prior(encoded[PRIOR_INDEX], truths[PRIOR_INDEX])
        for i in range(UNSCORED, len(frames)):
            result = engine.segment(encoded[i], prior)
            d = dice(result.mask, truths[i])
            det["error"].append(1 - d)
            det["dice"].setdefault(seq, []).append(d)
            det["distance"].append(result.best.distance if result.best else np.inf)
            for cfg in samplers:
                rec = per[label(cfg)]
                if cfg.kind == "latent" and head is None:
                    continue
                t = time.perf_counter()
                s = sample(engine, encoded[i], result, cfg, latent_head=head)
                rec["seconds"].append(time.perf_counter() - t)
                rec["disagree"].append(1 - mean_pairwise_dice(s.masks) if len(s.masks) else 1.0)
                rec["mean_dice"].setdefault(seq, []).append(dice(s.probability > 0.5, truths[i]))
                rec["calib"].add(s.probability, truths[i])
    error = np.array(det["error"])
    failed = (1 - error) < FAIL_DICE
    out = {"model": name, "frames": len(error), "failed_frames": int(failed.sum()),
           "dice_det": _seq_mean(det["dice"]), "samplers": {}}
    distance = np.array(det["distance"])
    finite = np.isfinite(distance)
    out["distance"] = {"spearman": float(spearmanr(distance[finite], error[finite]).statistic),
                       "auroc_fail": _auroc(failed[finite], distance[finite])}
    for cfg in samplers:
        rec = per[label(cfg)]
        if not rec["disagree"]:
            out["samplers"][label(cfg)] = {"skipped": "no latent head for this model (p2sam train-latent)"}
            continue
        dis = np.array(rec["disagree"])
        out["samplers"][label(cfg)] = {
            "kind": cfg.kind,
            "spearman": float(spearmanr(dis, error).statistic) if dis.std() > 0 else float("nan"),
            "auroc_fail": _auroc(failed, dis),
            "ece": rec["calib"].ece(),
            "dice_mean": _seq_mean(rec["mean_dice"]),
            "seconds": float(np.mean(rec["seconds"])),
            "threshold": _youden(failed, dis),
            "config": {"k": cfg.k, "scale": cfg.scale, "df": cfg.df, "tau": cfg.tau},
        }
    out["distance"]["threshold"] = _youden(failed[finite], distance[finite])
    return out


def label(cfg: SamplerConfig) -> str:
    """A sampler's row name: its kind, with the calibrated knob where it has one."""
    if cfg.kind == "prompt_noise":
        return f"prompt_noise(scale={cfg.scale:g})"
    if cfg.kind == "retrieval":
        return f"retrieval(tau={cfg.tau:g})"
    return cfg.kind


def recommend(out: dict, max_dice_loss: float = 0.005) -> dict | None:
    """The model card's ``qc`` section: the best-ranking sampler (Spearman) among those that do not
    lose mean Dice, its disagreement threshold as a minimum sample Dice, and the distance threshold."""
    ok = [(m["spearman"], name, m) for name, m in out["samplers"].items()
          if "spearman" in m and np.isfinite(m["spearman"]) and m["dice_mean"] >= out["dice_det"] - max_dice_loss]
    if not ok:
        return None
    _, name, m = max(ok, key=lambda t: t[0])
    qc = {"sampler": m["kind"], **{k: v for k, v in m["config"].items() if k in ("scale", "df", "tau")},
          "min_sample_dice": None if m["threshold"] is None else round(1.0 - m["threshold"], 4),
          # a distance that does not rank failures higher (AUROC <= 0.5) is no QC signal for this model
          "max_distance": (round(out["distance"]["threshold"], 4) if out["distance"]["threshold"] is not None
                           and out["distance"]["auroc_fail"] > 0.5 else None),
          "source": f"bench.uncertainty --calibrate: {name}, {out['frames']} frames, Youden's J for Dice < {FAIL_DICE}"}
    return qc


def _seq_mean(per_seq: dict[str, list[float]]) -> float:
    return float(np.mean([np.mean(v) for v in per_seq.values()])) if per_seq else float("nan")


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else float("nan")


def _youden(labels: np.ndarray, scores: np.ndarray) -> float | None:
    if not 0 < labels.sum() < len(labels):
        return None
    fpr, tpr, thr = roc_curve(labels, scores)
    return float(thr[int(np.argmax(tpr - fpr))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder of sequence folders (CVC-ClinicDB layout)")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--k", type=int, default=16, help="samples per frame")
    parser.add_argument("--samplers", default="prompt_noise,retrieval,latent")
    parser.add_argument("--scale", default=None, help="prompt_noise scale(s), comma-separated: one row each (default: the sampler's)")
    parser.add_argument("--tau", default=None, help="retrieval temperature(s), comma-separated: one row each (default: the sampler's)")
    parser.add_argument("--set", action="append", default=[], help="engine setting key=value")
    parser.add_argument("--limit", type=int, default=None, help="only the first N sequences")
    parser.add_argument("--json", help="write the numbers to this file")
    parser.add_argument("--calibrate", action="store_true", help="print QC thresholds (Youden's J)")
    args = parser.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"data folder not found: {args.data} (see ../shared/data/README.md); nothing measured")
        return 0
    samplers = []
    for kind in args.samplers.split(","):
        cfg = SamplerConfig(kind=kind.strip(), k=args.k)
        if cfg.kind == "prompt_noise" and args.scale:
            samplers += [replace(cfg, scale=float(v)) for v in args.scale.split(",")]
        elif cfg.kind == "retrieval" and args.tau:
            samplers += [replace(cfg, tau=float(v)) for v in args.tau.split(",")]
        else:
            samplers.append(cfg)
    out = run(args.data, args.weights, samplers, parse_overrides(args.set), args.limit)
    rows = []
    for kind, m in out["samplers"].items():
        if "skipped" in m:
            rows.append([kind, "-", "-", "-", "-", "-", m["skipped"]])
            continue
        rows.append([kind, m["spearman"], m["auroc_fail"], m["ece"], out["dice_det"], m["dice_mean"], f"{m['seconds']:.3f}"])
    print(f"model {out['model']}: {out['frames']} scored frames, {out['failed_frames']} failed (Dice < {FAIL_DICE})")
    print(table(["sampler", "spearman", "auroc_fail", "ece", "dice_det", "dice_mean", "s/frame"], rows))
    dist = out["distance"]
    print(f"Wasserstein distance of the chosen candidate as error signal: spearman {dist['spearman']:.3f}, auroc_fail {dist['auroc_fail']:.3f}")
    if args.calibrate:
        for kind, m in out["samplers"].items():
            if "threshold" in m:
                print(f"qc threshold ({kind} disagreement): {m['threshold']}")
        print(f"qc threshold (distance): {dist['threshold']}")
        out["qc"] = recommend(out)
        print(f"model card qc section: {json.dumps(out['qc'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    scored = [m["spearman"] for m in out["samplers"].values() if "spearman" in m and np.isfinite(m["spearman"])]
    print(f"spearman {max(scored) if scored else float('nan'):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
