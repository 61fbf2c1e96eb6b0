"""A reference-style P²SAM loop, for timing and agreement checks only (not used by the product).

It does what the public reference code does per target: for every candidate part count, run
scikit-learn KMeans (n_init=10) on the prior's foreground features, upsample the similarity maps,
pick points, make three sequential ``SamPredictor.predict`` calls (the cascade), and one exact EMD.
The prior's encoding is cached (as in the issue's measurement); the target is encoded with
``SamPredictor.set_image``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import ot
import torch
from segment_anything import SamPredictor
from sklearn.cluster import KMeans
from torch.nn import functional as F

from models.parts import mask_to_grid


@dataclass
class ReferenceResult:
    n_pos: int
    mask: np.ndarray
    distances: list[float]
    timings: dict[str, float] = field(default_factory=dict)


def _parts(feats: torch.Tensor, n: int) -> torch.Tensor:
    if n == 1:
        p = feats.mean(0, keepdim=True)
    else:
        labels = torch.from_numpy(KMeans(n_clusters=n, random_state=0, n_init=10).fit_predict(feats.numpy()))
        p = torch.stack([feats[labels == c].mean(0) for c in range(n)])
    return p / p.norm(dim=-1, keepdim=True)


def _peaks(sim: torch.Tensor) -> np.ndarray:
    """(x, y) of the maximum of each map (K x H x W)."""
    k, h, w = sim.shape
    idx = sim.reshape(k, -1).argmax(1)
    return torch.stack([idx % w, idx // w], 1).numpy()


@torch.inference_mode()
def reference_segment(predictor: SamPredictor, prior_features: torch.Tensor, prior_mask: np.ndarray, target: np.ndarray, pos_range=(1, 5)) -> ReferenceResult:
    sam = predictor.model
    t = {"encode": 0.0, "kmeans": 0.0, "decode": 0.0, "emd": 0.0, "other": 0.0}
    t0 = time.perf_counter()
    grid = prior_features.shape[-1]
    grid_mask = mask_to_grid(prior_mask, sam, grid)
    ref = prior_features[0].permute(1, 2, 0)
    fg, bg = ref[grid_mask], ref[~grid_mask]
    s = time.perf_counter()
    predictor.set_image(target)
    t["encode"] = time.perf_counter() - s
    feats = predictor.features[0]
    c, h, w = feats.shape
    norm = (feats / feats.norm(dim=0, keepdim=True)).reshape(c, h * w)
    best, best_d, distances = None, 1e6, []
    for n in range(pos_range[0], pos_range[1] + 1):
        if n > len(fg):
            continue
        s = time.perf_counter()
        protos = torch.cat([_parts(fg, n), _parts(bg, 1)])
        t["kmeans"] += time.perf_counter() - s
        sim = (protos @ norm).reshape(1, -1, h, w)
        sim = F.interpolate(sim, scale_factor=4, mode="bilinear")
        sim = sam.postprocess_masks(sim, predictor.input_size, predictor.original_size)[0]
        xy = _peaks(sim)
        labels = np.array([1] * n + [0])
        s = time.perf_counter()
        masks, _, logits = predictor.predict(point_coords=xy, point_labels=labels, multimask_output=False)
        masks, _, logits = predictor.predict(point_coords=xy, point_labels=labels, mask_input=logits[0:1], multimask_output=False)
        ys, xs = np.nonzero(masks[0])
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()])[None] if len(xs) else None
        masks, _, logits = predictor.predict(point_coords=xy, point_labels=labels, box=box, mask_input=logits[0:1], multimask_output=False)
        t["decode"] += time.perf_counter() - s
        s = time.perf_counter()
        on_grid = F.interpolate(torch.as_tensor(logits[None]), size=(grid, grid), mode="bilinear")[0, 0] > 0
        cand = feats.permute(1, 2, 0)[on_grid]
        if len(cand) == 0:
            d = 1e6 - 1
        else:
            a, b = fg.numpy().astype(np.float64), cand.numpy().astype(np.float64)
            d = float(ot.emd2(ot.unif(len(a)), ot.unif(len(b)), ot.dist(a, b), numItermax=10_000_000))
        t["emd"] += time.perf_counter() - s
        distances.append(d)
        if d < best_d:
            best, best_d = (n, masks[0]), d
    t["total"] = time.perf_counter() - t0
    t["other"] = t["total"] - sum(t[k] for k in ("encode", "kmeans", "decode", "emd"))
    return ReferenceResult(n_pos=best[0], mask=best[1], distances=distances, timings=t)
