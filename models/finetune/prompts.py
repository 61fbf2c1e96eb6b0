"""Prompts for interactive training: sampling them from the ground truth and encoding them.

Everything here lives in the model's INPUT frame: the image resized so its longest side is
``img_size`` and zero-padded bottom/right to ``img_size x img_size``. Points and boxes are
``(x, y)`` = (column, row) pixels of that frame, as ``SamPredictor.predict_torch`` expects;
masks are ``B x S x S`` (row, column) with ``S = img_size``; ``valid`` marks the unpadded area.

A batch of prompt sets is a ``PromptState``: per sample a (possibly empty) list of points with
labels (1 positive, 0 negative), an optional box, and optionally the previous iteration's
low-res logits as mask prompt. ``encode_training_prompts`` turns it into SAM's tokens the same
way the inference engine does (``models.decoder.encode_prompts``: SAM's padding point when there
is no box, right-padding + key-padding mask across the batch) but with the stop-gradient of the
reference fine-tuning: SAM's not-a-point and no-mask embeddings get gradient only from samples
that have no real prompt at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from segment_anything.modeling import Sam

from ..decoder import PromptBatch

FIRST_PROMPTS = ("none", "point", "box")


@dataclass
class PromptState:
    """Prompt sets for B samples (input-frame pixels)."""

    points: list[torch.Tensor]  # B tensors N_i x 2 float (x, y)
    labels: list[torch.Tensor]  # B tensors N_i long: 1 positive, 0 negative
    boxes: list[torch.Tensor | None]  # B tensors (x0, y0, x1, y1) float, or None
    mask_input: torch.Tensor | None = None  # B x 1 x 4g x 4g previous low-res logits (detached)
    kinds: list[str] = field(default_factory=list)  # iteration-0 prompt kind per sample

    @property
    def batch(self) -> int:
        return len(self.points)

    def has_sparse(self) -> list[bool]:
        return [len(p) > 0 or b is not None for p, b in zip(self.points, self.boxes)]


def _uniform_pick(region: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k (x, y) pixels drawn uniformly (with replacement) from a non-empty S x S bool region."""
    idx = torch.nonzero(region.reshape(-1), as_tuple=True)[0]
    choice = idx[torch.randint(len(idx), (k,), generator=gen)]
    width = region.shape[1]
    rows, cols = choice // width, choice % width
    return torch.stack([cols, rows], dim=1).float()


def gt_box(mask: torch.Tensor) -> torch.Tensor | None:
    """(x0, y0, x1, y1) inclusive box of an S x S bool mask, None if empty."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if xs.numel() == 0:
        return None
    return torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()


def noisy_box(box: torch.Tensor, valid: torch.Tensor, gen: torch.Generator, noise: float = 0.1) -> torch.Tensor:
    """Jitter each box side by N(0, noise x side length) (clamped at 2 std), kept inside ``valid``."""
    w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
    scale = torch.stack([w, h, w, h]) * noise
    jitter = (torch.randn(4, generator=gen) * scale).clamp(-2 * scale, 2 * scale)
    out = box + jitter
    ys, xs = torch.nonzero(valid, as_tuple=True)
    hi = torch.stack([xs.max(), ys.max(), xs.max(), ys.max()]).float()
    out = torch.minimum(out.clamp_min(0), hi)
    x0, x1 = torch.minimum(out[0], out[2]), torch.maximum(out[0], out[2])
    y0, y1 = torch.minimum(out[1], out[3]), torch.maximum(out[1], out[3])
    return torch.stack([x0, y0, x1, y1])


def first_prompts(gt: torch.Tensor, valid: torch.Tensor, gen: torch.Generator, kind_probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)) -> PromptState:
    """Iteration 0: per sample, no prompt, one random ground-truth point, or a noisy GT box.

    gt, valid: B x S x S bool. The kind is drawn from {none, point, box} with ``kind_probs``
    (uniform in the reference protocol). A sample with an empty ground truth gets no prompt.
    """
    probs = torch.tensor(kind_probs, dtype=torch.float)
    state = PromptState(points=[], labels=[], boxes=[])
    for i in range(gt.shape[0]):
        kind = FIRST_PROMPTS[int(torch.multinomial(probs, 1, generator=gen))]
        fg = gt[i] & valid[i]
        if not bool(fg.any()):
            kind = "none"
        pts, labs, box = torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), None
        if kind == "point":
            pts, labs = _uniform_pick(fg, 1, gen), torch.ones(1, dtype=torch.long)
        elif kind == "box":
            box = noisy_box(gt_box(fg), valid[i], gen)
        state.points.append(pts)
        state.labels.append(labs)
        state.boxes.append(box)
        state.kinds.append(kind)
    return state


def error_points(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, counts: list[int], gen: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Points drawn uniformly from each sample's error region, labelled by the kind of error.

    pred, gt, valid: B x S x S bool; counts: points per sample. A false-negative pixel
    (gt and not pred) gives a positive point (label 1), a false-positive pixel a negative one
    (label 0). A sample without errors gets points from its valid area labelled by the truth.
    """
    points, labels = [], []
    for i, k in enumerate(counts):
        if k <= 0:
            points.append(torch.zeros(0, 2))
            labels.append(torch.zeros(0, dtype=torch.long))
            continue
        region = (pred[i] != gt[i]) & valid[i]
        if not bool(region.any()):
            region = valid[i]
        xy = _uniform_pick(region, k, gen)
        cols, rows = xy[:, 0].long(), xy[:, 1].long()
        points.append(xy)
        labels.append(gt[i][rows, cols].long())
    return points, labels


def add_points(state: PromptState, points: list[torch.Tensor], labels: list[torch.Tensor], mask_input: torch.Tensor) -> PromptState:
    """The next iteration's prompts: the old points and box, the new points, the new mask prompt."""
    return PromptState(
        points=[torch.cat([a, b]) for a, b in zip(state.points, points)],
        labels=[torch.cat([a, b]) for a, b in zip(state.labels, labels)],
        boxes=list(state.boxes),
        mask_input=mask_input.detach(),
        kinds=list(state.kinds),
    )


def encode_training_prompts(sam: Sam, state: PromptState, stop_gradient: bool = True) -> PromptBatch:
    """SAM's prompt encoding for a batch of prompt sets, with the reference stop-gradient.

    Token layout per sample = ``PromptEncoder.forward``: the points (+ SAM's not-a-point padding
    point when there is no box), then the two box corners; right-padded to the batch's longest
    set with a key-padding mask (``models.decoder.decode`` hides padding from attention). With
    ``stop_gradient``, the not-a-point and no-mask embeddings are detached in every sample that
    has a real prompt (points, a box or a mask), so they learn only from "no prompt" samples.
    """
    pe = sam.prompt_encoder
    device = pe._get_device()
    size = pe.input_image_size
    tokens = []
    has_mask = state.mask_input is not None
    for pts, labs, box in zip(state.points, state.labels, state.boxes):
        real = len(pts) > 0 or box is not None or has_mask
        parts = []
        if len(pts) > 0:
            coords = pts.to(device).float() + 0.5
            lab = labs.to(device)
            emb = pe.pe_layer.forward_with_coords(coords[None], size)[0]
            emb = emb + torch.where(lab[:, None] == 1, pe.point_embeddings[1].weight, pe.point_embeddings[0].weight)
            parts.append(emb)
            if box is None:
                nap = pe.not_a_point_embed.weight
                parts.append(nap.detach() if (stop_gradient and real) else nap)
        if box is not None:
            corners = (box.to(device).float() + 0.5).reshape(1, 2, 2)
            emb = pe.pe_layer.forward_with_coords(corners, size)[0]
            emb = emb + torch.cat([pe.point_embeddings[2].weight, pe.point_embeddings[3].weight])
            parts.append(emb)
        tokens.append(torch.cat(parts) if parts else torch.zeros(0, pe.embed_dim, device=device))
    n = len(tokens)
    lengths = [t.shape[0] for t in tokens]
    width = max(lengths)
    sparse = torch.stack([torch.cat([t, t.new_zeros(width - t.shape[0], pe.embed_dim)]) for t in tokens]) if width else torch.zeros(n, 0, pe.embed_dim, device=device)
    key_padding = None
    if min(lengths) != width:
        key_padding = torch.arange(width, device=device)[None, :] >= torch.tensor(lengths, device=device)[:, None]
    g = pe.image_embedding_size
    if has_mask:
        dense = pe._embed_masks(state.mask_input.to(device))
    else:
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        if stop_gradient:
            real = torch.tensor(state.has_sparse(), device=device).reshape(n, 1, 1, 1)
            dense = torch.where(real, no_mask.detach(), no_mask).expand(n, -1, g[0], g[1])
        else:
            dense = no_mask.expand(n, -1, g[0], g[1])
    return PromptBatch(sparse=sparse, key_padding=key_padding, dense=dense)
