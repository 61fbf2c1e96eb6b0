"""The PerSAM-style 3-step decoding cascade, for many candidates at once.

(a) points, single mask (with PerSAM guidance when given); (b) the same points + (a)'s low-res
logits as mask prompt; (a candidate may also bring a box prompt, kept in (a) and (b), and a dense
mask prompt for (a): the registration-guided candidates of ``models/candidates.py``) (c) + the box of (b)'s mask at the original size + (b)'s logits. Steps (b)
and (c) use SAM's multimask output and keep the best predicted IoU when ``multimask`` is set
(natural images, as in PerSAM); medical mode keeps the single mask throughout (reference P²SAM).

``batched=True`` decodes all candidates in one decoder call per step; ``batched=False`` decodes
them one by one (the reference's loop). Both give the same masks.

Two ways to decode less (models/engine.py turns them on): candidates with the same prompt set
share one decode (``share``), and a ``prune`` callback may keep only some candidates after step
(a) for steps (b) and (c) (retrieval scores every candidate's step (a) mask, refines the best k).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    box: np.ndarray | None = None  # (x0, y0, x1, y1) original pixels: a box prompt for steps (a), (b)
    mask_input: torch.Tensor | None = None  # 1 x 1 x 4g x 4g dense mask prompt for step (a)


@dataclass
class CascadeOutput:
    low_res: torch.Tensor  # B x 1 x 4g x 4g final logits (step (a)'s for candidates not refined)
    iou: torch.Tensor  # B predicted IoU of the final masks (step (a)'s where not refined)
    boxes: list[np.ndarray | None]  # the step-(c) box per candidate, original pixels (None: not refined)
    refined: list[bool] | None = None  # went through steps (b) and (c) (all, without pruning)
    shared_with: list[int] | None = None  # index of the first candidate with the same prompts (itself if none)
    decoded: int = 0  # distinct prompt sets decoded at step (a) (= decoder rows per step)


# keep(step (a) logits U x 1 x 4g x 4g, their IoU U) -> indices (into those U) to refine
Pruner = Callable[[torch.Tensor, torch.Tensor], Sequence[int]]


def prompt_key(c: CascadeInput) -> bytes:
    """Identity of a candidate's prompts: the set of (x, y, label) points (order does not change
    SAM's decoder: its prompt tokens are permutation-equivariant) and the PerSAM bias, if any."""
    pts = sorted(zip(np.asarray(c.points).reshape(-1, 2)[:, 0].tolist(), np.asarray(c.points).reshape(-1, 2)[:, 1].tolist(),
                     np.asarray(c.labels).reshape(-1).tolist()))
    key = repr(pts).encode()
    if c.box is not None:
        key += b"box" + np.asarray(c.box, np.float64).tobytes()
    if c.mask_input is not None:
        key += b"mask" + c.mask_input.detach().float().cpu().numpy().tobytes()
    if c.attn_sim is not None:
        key += c.attn_sim.detach().float().cpu().numpy().tobytes()
    return key


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
    prune: Pruner | None = None,
    share: bool = True,
) -> CascadeOutput:
    """Decode every candidate through steps (a)-(c) on one encoded image (1 x 256 x g x g).

    ``share``: candidates with the same prompts (``prompt_key``) are decoded once and share the
    result. ``prune``: called once with step (a)'s output of the distinct candidates; only the
    ones it returns go on to steps (b) and (c) (the others keep their step (a) mask).
    ``batched=False`` decodes the candidates one by one (the reference's loop), same results.
    """
    n = len(inputs)
    owner = list(range(n))
    if share:
        first: dict[bytes, int] = {}
        owner = [first.setdefault(prompt_key(c), i) for i, c in enumerate(inputs)]
    uniq = sorted(set(owner))
    row = {i: r for r, i in enumerate(uniq)}
    todo = [inputs[i] for i in uniq]

    device = features.device
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    pts = [torch.as_tensor(transform.apply_coords(c.points.astype(np.float64), original_size), dtype=torch.float, device=device)
           if len(c.points) else None for c in todo]  # a box-only candidate has no points
    labs = [torch.as_tensor(c.labels, dtype=torch.float, device=device) if len(c.points) else None for c in todo]
    sims = [c.attn_sim for c in todo]
    given_boxes = [None if c.box is None else torch.as_tensor(transform.apply_boxes(np.asarray(c.box, np.float64)[None], original_size)[0],
                                                               dtype=torch.float, device=device) for c in todo]

    def groups(idx: list[int]) -> list[list[int]]:
        return [idx] if batched else [[i] for i in idx]

    # (a) points only, single mask, PerSAM guidance if any
    a_logits, a_iou = [], []
    for g in groups(list(range(len(todo)))):
        attn_sim = torch.cat([sims[i] for i in g], dim=0) if any(sims[i] is not None for i in g) else None  # B x 1 x 1 x g*g
        prompts = encode_prompts(sam, [pts[i] for i in g], [labs[i] for i in g], boxes=[given_boxes[i] for i in g])
        with_mask = [j for j, i in enumerate(g) if todo[i].mask_input is not None]
        if with_mask:  # dense mask prompts for those rows, SAM's no-mask embedding for the others
            prompts.dense = prompts.dense.clone()
            masks = torch.cat([todo[g[j]].mask_input for j in with_mask]).to(device)
            prompts.dense[with_mask] = sam.prompt_encoder._embed_masks(masks)
        lg, io = decode(sam, features, prompts, multimask=False, attn_sim=attn_sim, target_embedding=target_embedding, guidance=guidance)
        a_logits.append(lg)
        a_iou.append(io)
    a_logits, a_iou = torch.cat(a_logits), torch.cat(a_iou)

    keep = list(range(len(todo))) if prune is None else sorted(set(int(i) for i in prune(a_logits, a_iou[:, 0])))
    out_logits, out_iou = a_logits.clone(), a_iou[:, 0].clone()
    out_boxes: list[np.ndarray | None] = [None] * len(todo)
    for g in groups(keep) if keep else []:
        gp, gl = [pts[i] for i in g], [labs[i] for i in g]
        # (b) + previous logits as mask prompt
        logits = a_logits[g]
        logits, iou = _pick(*decode(sam, features, encode_prompts(sam, gp, gl, boxes=[given_boxes[i] for i in g], mask_inputs=logits),
                                    multimask=multimask))
        # (c) + box of the (b) mask at the original size
        full = upscale_logits(sam, logits, input_size, original_size)[:, 0] > sam.mask_threshold
        boxes = [box_of(m) for m in full]
        box_in = [
            torch.as_tensor(transform.apply_boxes(b[None], original_size)[0], dtype=torch.float, device=device) if b is not None else None
            for b in boxes
        ]
        logits, iou = _pick(*decode(sam, features, encode_prompts(sam, gp, gl, boxes=box_in, mask_inputs=logits), multimask=multimask))
        out_logits[g], out_iou[g] = logits, iou
        for i, b in zip(g, boxes):
            out_boxes[i] = b
    kept = set(keep)
    rows = [row[o] for o in owner]
    return CascadeOutput(
        low_res=out_logits[rows],
        iou=out_iou[rows],
        boxes=[out_boxes[r] for r in rows],
        refined=[r in kept for r in rows],
        shared_with=owner,
        decoded=len(todo),
    )
