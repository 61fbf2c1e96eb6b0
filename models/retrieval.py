"""Distribution-guided retrieval: the Wasserstein distance between prior and candidate features.

W(F_R^f, F_T^f(n)) is exact optimal transport (POT ``ot.emd2``) with uniform weights. The cost is
the squared Euclidean distance on raw features (the reference code, ``ot.dist``) or the cosine
distance (the paper's eq. 5). An empty candidate scores +inf.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import ot
import torch

Cost = Literal["sqeuclidean", "cosine"]


def cost_matrix(a: np.ndarray, b: np.ndarray, cost: Cost) -> np.ndarray:
    """Pairwise cost between rows of a (N x C) and b (M x C), float64."""
    a = a.astype(np.float64, copy=False)
    b = b.astype(np.float64, copy=False)
    if cost == "sqeuclidean":
        return ot.dist(a, b, metric="sqeuclidean")
    if cost == "cosine":
        an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return np.maximum(1.0 - an @ bn.T, 0.0)
    raise ValueError(f"unknown cost '{cost}' (sqeuclidean or cosine)")


def wasserstein(prior: torch.Tensor | np.ndarray, candidate: torch.Tensor | np.ndarray, cost: Cost = "sqeuclidean") -> float:
    """Exact OT distance between two point clouds of features (N x C, M x C), uniform weights."""
    a = prior.detach().cpu().numpy() if isinstance(prior, torch.Tensor) else np.asarray(prior)
    b = candidate.detach().cpu().numpy() if isinstance(candidate, torch.Tensor) else np.asarray(candidate)
    if len(a) == 0 or len(b) == 0:
        return math.inf
    m = cost_matrix(a, b, cost)
    return float(ot.emd2(ot.unif(len(a)), ot.unif(len(b)), m, numItermax=10_000_000))


def pick_best(distances: list[float]) -> int | None:
    """Index of the smallest finite distance; ties go to the earlier (fewer-parts) candidate."""
    best, best_d = None, math.inf
    for i, d in enumerate(distances):
        if d < best_d:
            best, best_d = i, d
    return best


def mask_area_fraction(low_res: torch.Tensor, input_size: tuple[int, int], img_size: int) -> list[float]:
    """Foreground fraction of each candidate (B x 1 x 4g x 4g low-res logits > 0) inside the
    unpadded image (the input frame ``input_size`` of ``img_size``, scaled to the low-res grid)."""
    side = low_res.shape[-1]
    h = max(1, math.ceil(input_size[0] * side / img_size))
    w = max(1, math.ceil(input_size[1] * side / img_size))
    return (low_res[:, 0, :h, :w] > 0).flatten(1).float().mean(1).tolist()


def size_aware_scores(distances: list[float], areas: list[float], prior_area: float, size_weight: float) -> list[float]:
    """Retrieval scores W / median(W) + size_weight x |ln(area / prior area)| (lower is better).

    Uniform-weight transport is blind to how much of the structure a candidate covers: a small
    mask on the structure's most typical cells transports cheaply (measured on CVC-ClinicDB with
    the small backbone: W alone picks masks far smaller than the truth). The size term keeps
    the candidate's area (fraction of the image) near the prior's. The median makes W
    scale-free. Empty candidates (W = inf) stay inf; with ``size_weight`` 0 the ranking is W's.
    """
    finite = [d for d in distances if math.isfinite(d)]
    if not finite:
        return [math.inf] * len(distances)
    scale = float(np.median(finite)) or 1.0
    eps = 1e-6
    return [
        d / scale + size_weight * abs(math.log(max(a, eps) / max(prior_area, eps))) if math.isfinite(d) else math.inf
        for d, a in zip(distances, areas)
    ]
