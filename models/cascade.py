"""The PerSAM-style 3-step decoding cascade, for many candidates at once.

(a) points, single mask (with PerSAM guidance when given); (b) the same points + (a)'s low-res
logits as mask prompt; (c) + the box of (b)'s mask at the original size + (b)'s logits. Steps (b)
and (c) use SAM's multimask output and keep the best predicted IoU when ``multimask`` is set
(natural images, as in PerSAM); medical mode keeps the single mask throughout (reference P²SAM).

``batched=True`` decodes all candidates in one decoder call per step; ``batched=False`` decodes
them one by one (the reference's loop). Both give the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from .decoder import Guidance, decode, encode_prompts, upscale_logits
from .parts import box_of


@dataclass
class CascadeInput:
    """One candidate's prompts: points (N x 2, (x, y) original pixels) and labels (N: 1/0)."""

    points: np.ndarray
    labels: np.ndarray
    attn_sim: torch.Tensor | None = None  # 1 x 1 x 1 x g*g (PerSAM guidance, step a only)


@dataclass
class CascadeOutput:
    low_res: torch.Tensor  # B x 1 x 4g x 4g final logits
    iou: torch.Tensor  # B predicted IoU of the final masks
    boxes: list[np.ndarray | None]  # the step-(c) box per candidate, original pixels


def _pick(logits: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    best = iou.argmax(dim=1)
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, best][:, None], iou[rows, best]


def run_cascade(
    sam: Sam,
    features: torch.Tensor,
    inputs: list[CascadeInput],
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    multimask: bool = False,
    target_embedding: torch.Tensor | None = None,
    guidance: Guidance = "reference",
    batched: bool = True,
) -> CascadeOutput:
    """Decode every candidate through steps (a)-(c) on one encoded image (1 x 256 x g x g)."""
    if not batched:
        outs = [
            run_cascade(sam, features, [one], input_size, original_size, multimask, target_embedding, guidance, True)
            for one in inputs
        ]
        return CascadeOutput(
            low_res=torch.cat([o.low_res for o in outs]),
            iou=torch.cat([o.iou for o in outs]),
            boxes=[o.boxes[0] for o in outs],
        )
    device = features.device
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    pts = [torch.as_tensor(transform.apply_coords(c.points.astype(np.float64), original_size), dtype=torch.float, device=device) for c in inputs]
    labs = [torch.as_tensor(c.labels, dtype=torch.float, device=device) for c in inputs]
    sims = [c.attn_sim for c in inputs]
    attn_sim = None
    if any(s is not None for s in sims):
        attn_sim = torch.cat(sims, dim=0)  # B x 1 x 1 x g*g

    # (a) points only, single mask, PerSAM guidance if any
    prompts = encode_prompts(sam, pts, labs)
    logits, iou = decode(sam, features, prompts, multimask=False, attn_sim=attn_sim, target_embedding=target_embedding, guidance=guidance)
    # (b) + previous logits as mask prompt
    prompts = encode_prompts(sam, pts, labs, mask_inputs=logits)
    logits, iou = _pick(*decode(sam, features, prompts, multimask=multimask))
    # (c) + box of the (b) mask at the original size
    full = upscale_logits(sam, logits, input_size, original_size)[:, 0] > sam.mask_threshold
    boxes = [box_of(m) for m in full]
    box_in = [
        torch.as_tensor(transform.apply_boxes(b[None], original_size)[0], dtype=torch.float, device=device) if b is not None else None
        for b in boxes
    ]
    prompts = encode_prompts(sam, pts, labs, boxes=box_in, mask_inputs=logits)
    logits, iou = _pick(*decode(sam, features, prompts, multimask=multimask))
    return CascadeOutput(low_res=logits, iou=iou, boxes=boxes)
