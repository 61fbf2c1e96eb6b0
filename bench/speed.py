"""Speed of P²SAM per target, as a ratio to the image encoder's time, measured in one run.

    python -m bench.speed --backbone vit_b --image-size 512

For each backbone (the one asked for, then the small one unless --no-small): random weights
(timing only), a synthetic prior + targets, the prior set once (cached), then per target:
- encoder time (the denominator);
- P²SAM with retrieval over 1-5 positive parts x 1 negative: batched (one decoder call per
  cascade step) and unbatched (one call per candidate and step), which must agree;
- PerSAM on the same encoding;
- a reference-style loop (bench/reference_style.py: KMeans n_init=10 per candidate, three
  sequential SamPredictor calls per candidate, one EMD per candidate).
ratio = (encoder + overhead) / encoder, with medians over targets. speedup_vs_reference =
reference overhead / P²SAM overhead (the part of the time the implementation controls).
LAST line: ``ratio <x>`` for --backbone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from segment_anything import SamPredictor

from models import P2SAMConfig, P2SAMEngine, build_sam
from models.uncertainty import SamplerConfig, sample

from .reference_style import reference_segment


def synthetic_case(size: int, n_targets: int, seed: int = 0):
    """A textured colour image with an elliptical structure, and shifted/deformed follow-ups."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size

    def image(shift: tuple[float, float], scale: float) -> tuple[np.ndarray, np.ndarray]:
        img = np.zeros((size, size, 3), np.float32)
        for _ in range(12):
            cy, cx, r = rng.random(), rng.random(), 0.05 + 0.2 * rng.random()
            img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)[..., None] * rng.random(3) * 120
        cy, cx = 0.45 + shift[0], 0.5 + shift[1]
        mask = ((yy - cy) / (0.18 * scale)) ** 2 + ((xx - cx) / (0.12 * scale)) ** 2 < 1
        img[mask] = img[mask] * 0.3 + np.array([200, 90, 70]) * 0.7
        img += rng.normal(0, 8, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8), mask

    prior = image((0.0, 0.0), 1.0)
    targets = [image((0.03 * (i + 1), -0.02 * (i + 1)), 1.0 - 0.08 * (i + 1))[0] for i in range(n_targets)]
    return prior[0], prior[1], targets


def _median(values):
    return statistics.median(values) if values else float("nan")


def measure(backbone: str, image_size: int, n_targets: int, sampling: bool = False) -> dict:
    torch.manual_seed(0)
    sam = build_sam(backbone)
    engine = P2SAMEngine(sam, P2SAMConfig(pos_range=(1, 5), neg_range=(1, 1)))
    unbatched = engine.with_config(batched=False)
    prior_img, prior_mask, targets = synthetic_case(image_size, n_targets)
    t = time.perf_counter()
    prior = engine.set_prior(prior_img, prior_mask)
    prior_time = time.perf_counter() - t
    engine.segment(engine.encode(targets[0]), prior)  # warm-up (allocator, threads)

    rows: dict[str, list] = {k: [] for k in ("encode", "p2sam", "unbatched", "persam", "reference", "ref_encode",
                                               "product", "sample_prompt_noise", "sample_retrieval")}
    product = engine.with_config(pos_range=(1, 5), neg_range=(1, 3))
    product_prior = product.set_prior(prior_img, prior_mask) if sampling else None
    stages: dict[str, list] = {}
    ref_stages: dict[str, list] = {}
    agree_unbatched, agree_reference = [], []
    predictor = SamPredictor(sam)
    for target in targets:
        t = time.perf_counter()
        enc = engine.encode(target)
        rows["encode"].append(time.perf_counter() - t)
        res = engine.segment(enc, prior)
        rows["p2sam"].append(res.timings["total"])
        for k, v in res.timings.items():
            stages.setdefault(k, []).append(v)
        one = unbatched.segment(enc, prior)
        rows["unbatched"].append(one.timings["total"])
        agree_unbatched.append(res.best.n_pos == one.best.n_pos and bool(np.array_equal(res.mask, one.mask)))
        rows["persam"].append(engine.segment(enc, prior, method="persam").timings["total"])
        if sampling:
            # uncertainty: K = 16 samples on top of the product configuration's deterministic result
            product_res = product.segment(enc, product_prior)
            rows["product"].append(rows["encode"][-1] + product_res.timings["total"])
            for kind in ("prompt_noise", "retrieval"):
                t = time.perf_counter()
                sample(product, enc, product_res, SamplerConfig(kind=kind, k=16))
                rows[f"sample_{kind}"].append(time.perf_counter() - t)
        ref = reference_segment(predictor, prior.image.features, prior_mask, target)
        rows["reference"].append(ref.timings["total"] - ref.timings["encode"])
        rows["ref_encode"].append(ref.timings["encode"])
        for k, v in ref.timings.items():
            ref_stages.setdefault(k, []).append(v)
        inter = np.logical_and(ref.mask, res.mask).sum()
        dice = 2 * inter / max(ref.mask.sum() + res.mask.sum(), 1)
        agree_reference.append((ref.n_pos == res.best.n_pos, float(dice)))
    enc = _median(rows["encode"] + rows["ref_encode"])
    over = {k: _median(rows[k]) for k in ("p2sam", "unbatched", "persam", "reference")}
    return {
        "backbone": backbone,
        "image_size": image_size,
        "grid": engine.grid,
        "prior_once": prior_time,
        "encode": enc,
        "overhead": over,
        "ratio": {k: (enc + v) / enc for k, v in over.items()},
        "speedup_vs_reference": over["reference"] / over["p2sam"],
        "stages": {k: _median(v) for k, v in stages.items()},
        "ref_stages": {k: _median(v) for k, v in ref_stages.items()},
        "sampling": {k: (_median(rows["product"]) + _median(rows[f"sample_{k}"])) / _median(rows["product"])
                     for k in ("prompt_noise", "retrieval")} if sampling else {},
        "product_time": _median(rows["product"]) if sampling else None,
        "agree_unbatched": all(agree_unbatched),
        "agree_reference": agree_reference,
    }


def print_report(m: dict) -> None:
    print(f"\n== {m['backbone']} (image {m['image_size']} px, grid {m['grid']}x{m['grid']}, random weights) ==")
    print(f"prior set once per patient (encode + clustering): {m['prior_once']:.3f} s")
    print(f"{'stage (P²SAM, batched, per target)':<40}{'seconds':>10}")
    print(f"{'encoder':<40}{m['encode']:>10.4f}")
    for k in ("prompts", "decode", "transport", "postprocess"):
        print(f"{'  ' + k:<40}{m['stages'].get(k, float('nan')):>10.4f}")
    print(f"{'stage (reference-style, per target)':<40}{'seconds':>10}")
    for k in ("kmeans", "decode", "emd", "other"):
        print(f"{'  ' + k:<40}{m['ref_stages'].get(k, float('nan')):>10.4f}")
    print(f"{'implementation':<28}{'overhead s':>12}{'ratio':>10}")
    for k, label in (("p2sam", "P²SAM batched"), ("unbatched", "P²SAM unbatched"), ("persam", "PerSAM"), ("reference", "reference-style")):
        print(f"{label:<28}{m['overhead'][k]:>12.4f}{m['ratio'][k]:>10.4f}")
    print(f"batched == unbatched (chosen parts and masks): {m['agree_unbatched']}")
    if m["sampling"]:
        print(f"uncertainty, K = 16 samples on the product configuration (1-5 x 1-3 parts, {m['product_time']:.3f} s per target):")
        for kind, ratio in m["sampling"].items():
            print(f"  {kind:<14} (deterministic + sampling) / deterministic = {ratio:.3f}")
    print("reference-style agreement per target (same part count, mask Dice): "
          + ", ".join(f"({a}, {d:.4f})" for a, d in m["agree_reference"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="vit_b")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--targets", type=int, default=2, help="follow-up images timed (medians are reported)")
    parser.add_argument("--no-small", action="store_true", help="skip the small backbone")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = []
    if not args.no_small and args.backbone != "small":
        results.append(measure("small", 256, max(args.targets, 5), sampling=True))
    results.append(measure(args.backbone, args.image_size, args.targets, sampling=args.backbone == "small"))
    for m in results:
        print_report(m)
    print()
    for m in results:
        print(f"{m['backbone']}: ratio {m['ratio']['p2sam']:.3f}  persam_ratio {m['ratio']['persam']:.3f}  "
              f"reference_ratio {m['ratio']['reference']:.3f}  speedup_vs_reference {m['speedup_vs_reference']:.2f}")
    main_result = results[-1]
    print(f"speedup_vs_reference {main_result['speedup_vs_reference']:.2f}")
    print(f"ratio {main_result['ratio']['p2sam']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
