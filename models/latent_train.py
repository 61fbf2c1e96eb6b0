"""Training the latent head (models/latent.py) on a frozen SAM.

No multi-annotator data is available here, so each training mask is perturbed the way annotators
disagree — the boundary shifted by a smooth random displacement field, and the whole outline
dilated or eroded by a few pixels — and the head learns to reproduce that spread. Prompts mimic
P²SAM's final cascade step: 1-5 positive points inside the structure, one negative outside, the
jittered box, and the model's own step-(a) logits as mask prompt.

Images are H x W x 3 uint8, masks H x W bool; training targets live in SAM's low-res frame
(4g x 4g, the padded input square).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage
from segment_anything.utils.transforms import ResizeLongestSide
from torch.distributions import kl_divergence
from torch.nn import functional as F

from .decoder import decode, encode_prompts
from .engine import P2SAMEngine
from .latent import LatentHead


def perturb_mask(mask: np.ndarray, rng: np.random.Generator, max_shift: float = 0.06, max_morph: float = 0.05) -> np.ndarray:
    """An 'other annotator' version of a mask: smooth boundary shift + dilation/erosion.

    Amplitudes are fractions of the structure's equivalent diameter, so small and large
    structures vary alike. Never returns an empty mask for a non-empty input.
    """
    mask = np.asarray(mask, bool)
    area = int(mask.sum())
    if area == 0:
        return mask
    diameter = 2.0 * np.sqrt(area / np.pi)
    h, w = mask.shape
    amp = rng.uniform(0, max_shift) * diameter
    coarse = rng.normal(size=(2, 4, 4)) * amp
    field_y = ndimage.zoom(coarse[0], (h / 4, w / 4), order=3)[:h, :w]
    field_x = ndimage.zoom(coarse[1], (h / 4, w / 4), order=3)[:h, :w]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    warped = ndimage.map_coordinates(mask.astype(np.float32), [yy + field_y, xx + field_x], order=1, mode="constant") > 0.5
    radius = int(round(rng.uniform(-max_morph, max_morph) * diameter))
    if radius > 0:
        warped = ndimage.binary_dilation(warped, iterations=radius)
    elif radius < 0:
        eroded = ndimage.binary_erosion(warped, iterations=-radius)
        warped = eroded if eroded.any() else warped
    return warped if warped.any() else mask


def to_low_res(mask: np.ndarray, img_size: int, low: int) -> torch.Tensor:
    """H x W bool -> 1 x low x low float in SAM's padded input frame (area fractions)."""
    resized = ResizeLongestSide(img_size).apply_image(np.repeat(mask.astype(np.uint8)[..., None] * 255, 3, axis=2))[..., 0]
    canvas = torch.zeros((1, 1, img_size, img_size))
    canvas[0, 0, : resized.shape[0], : resized.shape[1]] = torch.from_numpy(resized / 255.0)
    return F.adaptive_avg_pool2d(canvas, (low, low))[0]


@dataclass
class LatentTrainConfig:
    epochs: int = 8
    lr: float = 1e-3
    beta: float = 10.0
    batch_size: int = 8
    seed: int = 0


@dataclass
class LatentHistory:
    losses: list[float] = field(default_factory=list)
    seconds_per_epoch: list[float] = field(default_factory=list)


def _prompts_for(mask: np.ndarray, rng: np.random.Generator, original_size, transform):
    ys, xs = np.nonzero(mask)
    n_pos = int(rng.integers(1, 6))
    pick = rng.integers(0, len(xs), size=n_pos)
    pos = np.stack([xs[pick], ys[pick]], 1)
    bys, bxs = np.nonzero(~mask)
    neg = np.stack([bxs, bys], 1)[rng.integers(0, len(bxs), size=1)] if len(bxs) else np.zeros((0, 2), int)
    points = np.concatenate([pos, neg]).astype(np.float64)
    labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    span = np.array([xs.max() - xs.min() + 1, ys.max() - ys.min() + 1], float)
    jitter = rng.normal(0, 0.05, 4) * np.concatenate([span, span])
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], float) + jitter
    return (torch.as_tensor(transform.apply_coords(points, original_size), dtype=torch.float),
            torch.as_tensor(labels, dtype=torch.float),
            torch.as_tensor(transform.apply_boxes(box[None], original_size)[0], dtype=torch.float))


def train_latent_head(
    engine: P2SAMEngine,
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    cfg: LatentTrainConfig = LatentTrainConfig(),
    head: LatentHead | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[LatentHead, LatentHistory]:
    """Fit a latent head on (image, mask) pairs with the SAM in ``engine`` frozen."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    sam = engine.sam
    was_trainable = {n: p.requires_grad for n, p in sam.named_parameters()}
    for p in sam.parameters():
        p.requires_grad_(False)
    head = head or LatentHead()
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    img_size, grid = sam.image_encoder.img_size, engine.grid
    cache = []
    for image, mask in samples:
        if not np.asarray(mask).any():
            continue
        enc = engine.encode(image)
        cache.append((enc.features.clone(), np.asarray(mask, bool), enc.original_size))
    history = LatentHistory()
    for epoch in range(cfg.epochs):
        t0, total, count = time.perf_counter(), 0.0, 0
        order = rng.permutation(len(cache))
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            feats = torch.cat([cache[i][0] for i in idx])
            pts, labs, boxes, targets = [], [], [], []
            for i in idx:
                _, mask, size = cache[i]
                p, lab, b = _prompts_for(mask, rng, size, transform)
                pts.append(p), labs.append(lab), boxes.append(b)
                targets.append(to_low_res(perturb_mask(mask, rng), img_size, 4 * grid))
            target = torch.stack(targets)  # B x 1 x 4g x 4g
            with torch.no_grad():
                first, _ = decode(sam, feats, encode_prompts(sam, pts, labs), chunk_tokens=10**9)
                prompts = encode_prompts(sam, pts, labs, boxes=boxes, mask_inputs=first)
            grid_mask = F.adaptive_avg_pool2d(target, (grid, grid)) > 0.5
            post = head.posterior(feats, grid_mask)
            prior = head.prior(feats)
            z = post.rsample()
            prompts.sparse = prompts.sparse + head.offset(z)
            logits, _ = decode(sam, feats, prompts, chunk_tokens=10**9)
            prob = torch.sigmoid(logits)
            # Reconstruction summed over pixels (as in the Probabilistic U-Net), so that
            # beta * KL in nats is on a comparable scale and the latent is not collapsed.
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1).mean()
            inter = (prob * target).flatten(1).sum(1)
            dice = 1 - (2 * inter + 1) / (prob.flatten(1).sum(1) + target.flatten(1).sum(1) + 1)
            kl = kl_divergence(post, prior).mean()
            loss = bce + dice.mean() + cfg.beta * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        history.losses.append(total / max(count, 1))
        history.seconds_per_epoch.append(time.perf_counter() - t0)
        if on_epoch is not None:
            on_epoch(epoch, history.losses[-1])
    for n, p in sam.named_parameters():
        p.requires_grad_(was_trainable[n])
    head.eval()
    return head, history
