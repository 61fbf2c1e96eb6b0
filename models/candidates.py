"""Registration-guided candidates: where the structure should be, weighed with what it looks like.

P²SAM keeps only the prior's appearance. A follow-up of the same patient also knows roughly WHERE
the structure is: the prior contour mapped onto the target by registration (the *propagated
mask*, ``H x W`` bool at the target's original size). From it come extra candidates, decoded in
the same cascade as the part-aware point candidates (``models/cascade.py``):

- ``box``: the propagated mask's box, widened by a margin, as a box prompt;
- ``box_points``: that box plus the part-aware points of a point candidate;
- ``mask_points``: the propagated mask as SAM's dense mask prompt plus those points.

The selection rule scores every candidate (lower is better)::

    W / median(W) - overlap_weight x Dice(candidate, propagated)
                  + area_weight x |ln(area / propagated area)| - iou_weight x predicted IoU

with W the Wasserstein distance to the prior's foreground features (the retrieval's signal), and
two gates: a location candidate must look like the structure (its W at most ``location_gate``
times the best point candidate's W), and with ``absent_ratio`` > 0 any candidate whose W exceeds
``absent_ratio`` times W(prior foreground, prior background) is taken for background, so a
structure that disappeared gives an empty mask (``found: false``), not a box-shaped blob.

Boxes are ``(x0, y0, x1, y1)`` inclusive pixels of the target's original image; masks ``H x W``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from torch.nn import functional as F

from .retrieval import size_aware_scores

KINDS_WITH_LOCATION = ("box", "box_points", "mask_points")
MASK_PROMPT_LOGIT = 8.0  # dense mask prompt: +8 inside the propagated mask, -8 outside (SAM's low-res logit scale)


@dataclass(frozen=True)
class SelectionWeights:
    """The selection rule's weights and gates (see module docstring)."""

    overlap: float = 1.0
    area: float = 0.25
    iou: float = 0.0
    location_gate: float = 1.5
    absent_ratio: float = 0.0


def propagated_box(mask: np.ndarray, margin: float) -> np.ndarray | None:
    """Box (x0, y0, x1, y1) of a H x W bool mask, widened by ``margin`` x its size on every side
    (at least 1 pixel when ``margin`` > 0), clipped to the image; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    h, w = mask.shape
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    dx, dy = (max(1.0, margin * (x1 - x0 + 1)), max(1.0, margin * (y1 - y0 + 1))) if margin > 0 else (0.0, 0.0)
    return np.array([max(0.0, x0 - dx), max(0.0, y0 - dy), min(w - 1.0, x1 + dx), min(h - 1.0, y1 + dy)], dtype=np.float64)


def mask_prompt(sam: Sam, mask: np.ndarray) -> torch.Tensor:
    """A H x W bool mask as SAM's dense mask prompt: 1 x 1 x 4g x 4g logits in the model's padded
    input frame (resized like the image, padded bottom/right as background)."""
    img_size = sam.image_encoder.img_size
    side = 4 * int(sam.prompt_encoder.image_embedding_size[0])
    h, w = ResizeLongestSide.get_preprocess_shape(mask.shape[0], mask.shape[1], img_size)
    m = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
    canvas = torch.zeros((1, 1, img_size, img_size))
    canvas[..., :h, :w] = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    low = F.interpolate(canvas, size=(side, side), mode="bilinear", align_corners=False)
    return ((low > 0.5).float() * 2 - 1) * MASK_PROMPT_LOGIT


def overlaps(low_res: torch.Tensor, location: torch.Tensor) -> list[float]:
    """Dice of each candidate (B x 1 x 4g x 4g logits > 0) with the propagated mask prompt
    (1 x 1 x 4g x 4g, > 0 inside), on the low-res grid; 0 when both are empty."""
    cand = (low_res[:, 0] > 0).flatten(1).float()
    loc = (location[0, 0] > 0).flatten().float().to(cand.device)
    inter, sizes = cand @ loc, cand.sum(1) + loc.sum()
    return torch.where(sizes > 0, 2 * inter / sizes.clamp_min(1), torch.zeros_like(sizes)).tolist()


def selection_scores(distances: list[float], overlap: list[float], areas: list[float], reference_area: float,
                     ious: list[float], weights: SelectionWeights) -> list[float]:
    """The rule's score of every candidate (lower is better); +inf for empty candidates: the
    retrieval's size-aware score (W / median W + area term) minus the overlap and IoU terms."""
    base = size_aware_scores(distances, areas, reference_area, weights.area)
    return [b - weights.overlap * o - weights.iou * q if math.isfinite(b) else math.inf
            for b, o, q in zip(base, overlap, ious)]


def eligible(kinds: list[str], distances: list[float], weights: SelectionWeights, absent_distance: float | None) -> list[bool]:
    """Which candidates the rule may choose: non-empty; location candidates only when they look
    like the structure (W <= location_gate x the best point candidate's W; none if no point
    candidate found anything); none that look like background (W > absent_ratio x ``absent_distance``)."""
    plain = [d for k, d in zip(kinds, distances) if k not in KINDS_WITH_LOCATION and math.isfinite(d)]
    best_plain = min(plain) if plain else math.inf
    out = []
    for k, d in zip(kinds, distances):
        ok = math.isfinite(d)
        if ok and k in KINDS_WITH_LOCATION:
            ok = math.isfinite(best_plain) and d <= weights.location_gate * best_plain
        if ok and weights.absent_ratio > 0 and absent_distance is not None and math.isfinite(absent_distance):
            ok = d <= weights.absent_ratio * absent_distance
        out.append(ok)
    return out
