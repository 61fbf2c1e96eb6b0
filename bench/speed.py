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
Product retrieval rows (first): the product's ranges (1-5 positive x 1-3 negative parts) as the
reference cascades them (every candidate through steps (a)-(c)) and pruned (every candidate scored
after step (a), the best --prune-k refined, one decode per distinct point set), each with its
ratio to one encoder pass. --device cuda runs it on a GPU with the encoder under bf16/fp16
autocast (--dtype) and reports the masks' Dice to the float32 encoder's.
LAST line: ``ratio <x>`` = pruned product retrieval for --backbone (``reference_ratio`` above it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from segment_anything import SamPredictor

from models import P2SAMConfig, P2SAMEngine, build_sam, load_model
from models.uncertainty import SamplerConfig, sample
from p2sam.modelpool import RECOMMENDED_ENGINE, part_ranges

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def real_case(folder: str, n_targets: int):
    """Prior = the 3rd frame of a sequence folder (bench.quality's layout), targets = the next frames."""
    from .common import read_mask, read_rgb
    from .quality import PRIOR_INDEX, sequence_frames

    frames = sequence_frames(folder)
    if len(frames) < PRIOR_INDEX + 2:
        raise SystemExit(f"{folder}: needs at least {PRIOR_INDEX + 2} frames (<n>.png + <n>_mask.png)")
    targets = [read_rgb(f.image) for f in frames[PRIOR_INDEX + 1 : PRIOR_INDEX + 1 + n_targets]]
    return read_rgb(frames[PRIOR_INDEX].image), read_mask(frames[PRIOR_INDEX].mask), targets


def retrieval_rows(engine: P2SAMEngine, prior_img, prior_mask, targets, prune_k: int, dtype: str,
                   ranges: dict | None = None) -> dict:
    """The product's retrieval (``ranges``: the model card's part ranges, p2sam.modelpool.part_ranges) on each target: the reference
    (every candidate through the 3-step cascade, prompts as they come) and the pruned engine
    (step (a) for all, the best ``prune_k`` refined, one decode per distinct point set), with the
    encoder pass each needs; and, for a reduced-precision encoder, its masks against float32's."""
    ranges = ranges or part_ranges({"engine": RECOMMENDED_ENGINE})
    reference = engine.with_config(**ranges, prune_k=0, share_prompts=False, encoder_dtype="float32")
    pruned = reference.with_config(prune_k=prune_k, share_prompts=True, encoder_dtype=dtype)
    prior = reference.set_prior(prior_img, prior_mask)
    reference.segment(reference.encode(targets[0]), prior)  # warm-up
    if dtype != "float32":
        pruned.encode(targets[0])
    out: dict[str, list] = {k: [] for k in ("encode", "encode_dtype", "reference", "pruned", "same_choice", "dice", "dtype_dice", "rows")}
    stages: dict[str, dict[str, list]] = {"reference": {}, "pruned": {}}
    dev = engine.device
    for target in targets:
        _sync(dev)
        t = time.perf_counter()
        enc = reference.encode(target)
        _sync(dev)
        out["encode"].append(time.perf_counter() - t)
        enc_lo = enc
        if dtype != "float32":
            t = time.perf_counter()
            enc_lo = pruned.encode(target)
            _sync(dev)
            out["encode_dtype"].append(time.perf_counter() - t)
        for name, eng, e in (("reference", reference, enc), ("pruned", pruned, enc)):
            _sync(dev)
            t = time.perf_counter()
            res = eng.segment(e, prior)
            _sync(dev)
            out[name].append(time.perf_counter() - t)
            for k, v in res.timings.items():
                stages[name].setdefault(k, []).append(v)
            if name == "reference":
                ref_res = res
        same = (ref_res.best is not None and res.best is not None
                and (ref_res.best.n_pos, ref_res.best.n_neg) == (res.best.n_pos, res.best.n_neg))
        out["same_choice"].append(bool(same) or (ref_res.best is None and res.best is None))
        inter = np.logical_and(ref_res.mask, res.mask).sum()
        out["dice"].append(float(2 * inter / max(ref_res.mask.sum() + res.mask.sum(), 1)) if (ref_res.mask.any() or res.mask.any()) else 1.0)
        out["rows"].append(sum(1 for c in res.candidates if c.shared_with is None))
        if dtype != "float32":
            lo = pruned.segment(enc_lo, prior)
            inter = np.logical_and(lo.mask, res.mask).sum()
            out["dtype_dice"].append(float(2 * inter / max(lo.mask.sum() + res.mask.sum(), 1)) if (lo.mask.any() or res.mask.any()) else 1.0)
    enc_t = _median(out["encode"])
    result = {
        "prune_k": prune_k,
        "candidates": len(ref_res.candidates),
        "encode": enc_t,
        "reference": _median(out["reference"]),
        "pruned": _median(out["pruned"]),
        "ratio_reference": (enc_t + _median(out["reference"])) / enc_t,
        "ratio_pruned": (enc_t + _median(out["pruned"])) / enc_t,
        "stages": {name: {k: _median(v) for k, v in st.items()} for name, st in stages.items()},
        "same_choice": out["same_choice"],
        "dice": out["dice"],
        "distinct_prompt_sets": out["rows"],
        "dtype": dtype,
    }
    if dtype != "float32":
        e_lo = _median(out["encode_dtype"])
        result.update(encode_dtype=e_lo, ratio_pruned_dtype=(e_lo + _median(out["pruned"])) / e_lo,
                      dtype_dice=out["dtype_dice"])
    return result


def measure(backbone: str, image_size: int, n_targets: int, sampling: bool = False, weights: str | None = None,
            data: str | None = None, device: str = "cpu", prune_k: int = 3, dtype: str = "float32", full: bool = True) -> dict:
    torch.manual_seed(0)
    loaded = load_model(weights, device=device) if weights else None
    sam = loaded.sam if loaded else build_sam(backbone).to(device)
    ranges = part_ranges(loaded.card if loaded else {"engine": RECOMMENDED_ENGINE})  # what jobs on this model run
    engine = P2SAMEngine(sam, P2SAMConfig(pos_range=(1, 5), neg_range=(1, 1)))  # the reference code's ranges
    unbatched = engine.with_config(batched=False)
    prior_img, prior_mask, targets = real_case(data, n_targets) if data else synthetic_case(image_size, n_targets)
    image_size = max(prior_img.shape[:2]) if data else image_size
    t = time.perf_counter()
    prior = engine.set_prior(prior_img, prior_mask)
    prior_time = time.perf_counter() - t
    retrieval = retrieval_rows(engine, prior_img, prior_mask, targets, prune_k, dtype, ranges)
    if not full:
        return {"backbone": backbone, "weights": weights, "image_size": image_size, "grid": engine.grid, "prior_once": prior_time,
                "retrieval": retrieval, "device": str(engine.device), "full": False}
    engine.segment(engine.encode(targets[0]), prior)  # warm-up (allocator, threads)

    rows: dict[str, list] = {k: [] for k in ("encode", "p2sam", "unbatched", "persam", "reference", "ref_encode",
                                               "product", "sample_prompt_noise", "sample_retrieval")}
    product = engine.with_config(**ranges)
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
        "weights": weights,
        "device": str(engine.device),
        "full": True,
        "retrieval": retrieval,
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


def print_retrieval(m: dict) -> None:
    r = m["retrieval"]
    print(f"product retrieval (1-5 pos x 1-3 neg = {r['candidates']} candidates), {m['device']}, per target:")
    print(f"{'stage':<22}{'reference s':>14}{'pruned k=' + str(r['prune_k']) + ' s':>16}")
    print(f"{'encoder (float32)':<22}{r['encode']:>14.4f}{r['encode']:>16.4f}")
    for k in ("prompts", "decode", "prune", "transport", "postprocess", "total"):
        a, b = r["stages"]["reference"].get(k), r["stages"]["pruned"].get(k)
        fa = "-" if a is None else f"{a:.4f}"
        fb = "-" if b is None else f"{b:.4f}"
        print(f"{'  ' + k:<22}{fa:>14}{fb:>16}")
    print(f"ratio (encoder + P²SAM) / encoder: reference {r['ratio_reference']:.3f}, pruned {r['ratio_pruned']:.3f}")
    print(f"pruned vs reference: same chosen (n_pos, n_neg) {sum(r['same_choice'])}/{len(r['same_choice'])}, "
          f"mask Dice {', '.join(f'{d:.4f}' for d in r['dice'])}; distinct prompt sets decoded {r['distinct_prompt_sets']}")
    if r["dtype"] != "float32":
        print(f"encoder autocast {r['dtype']}: {r['encode_dtype']:.4f} s per pass, ratio (pruned) {r['ratio_pruned_dtype']:.3f} "
              f"(to its own encoder pass); mask Dice to the float32 encoder's: {', '.join(f'{d:.4f}' for d in r['dtype_dice'])}")


def print_report(m: dict) -> None:
    print(f"\n== {m['backbone']} (image {m['image_size']} px, grid {m['grid']}x{m['grid']}, "
          f"{'weights ' + m['weights'] if m.get('weights') else 'random weights'}) ==")
    print(f"prior set once per patient (encode + clustering): {m['prior_once']:.3f} s")
    print_retrieval(m)
    if not m.get("full", True):
        return
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
    parser.add_argument("--weights", default=None, help="load these weights (a bundled name such as kvasir or lite_medsam, or a file) instead of random ones")
    parser.add_argument("--data", default=None, help="a sequence folder (<n>.png + <n>_mask.png): prior = 3rd frame, targets = the next frames (default: synthetic)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="encoder autocast for the pruned row (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--prune-k", type=int, default=3, help="candidates refined after step (a) in the pruned row")
    parser.add_argument("--retrieval-only", action="store_true",
                        help="only the product retrieval rows (reference vs pruned): skip the 1-5 x 1 rows, PerSAM, unbatched, reference-style loop, sampling")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"skipped: --device {args.device} but torch sees no CUDA device")
        return 0
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    common = dict(device=args.device, prune_k=args.prune_k, dtype=dtype, full=not args.retrieval_only)
    results = []
    if not args.no_small and args.backbone != "small":
        results.append(measure("small", 256, max(args.targets, 5), sampling=not args.retrieval_only, **common))
    results.append(measure(args.backbone, args.image_size, args.targets, sampling=args.backbone == "small" and not args.retrieval_only,
                           weights=args.weights, data=args.data, **common))
    for m in results:
        print_report(m)
    print()
    for m in results:
        r = m["retrieval"]
        line = f"{m['backbone']}: reference_ratio {r['ratio_reference']:.3f}  pruned_ratio {r['ratio_pruned']:.3f} (k={r['prune_k']})"
        if m.get("full", True):
            line += (f"  ratio_1-5x1 {m['ratio']['p2sam']:.3f}  persam_ratio {m['ratio']['persam']:.3f}  "
                     f"reference_style_ratio {m['ratio']['reference']:.3f}  speedup_vs_reference_style {m['speedup_vs_reference']:.2f}")
        print(line)
    main_result = results[-1]["retrieval"]
    print(f"reference_ratio {main_result['ratio_reference']:.3f}")
    print(f"ratio {main_result['ratio_pruned']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
