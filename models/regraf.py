"""ReGRAF: training-free refinement of the prompts by gradient flow on the target embedding.

    z <- z + eta * clip(grad_z d(z, P)) + sqrt(2 * gamma * eta) * xi,   xi ~ N(0, I)

with d = the mask decoder's logits summed over the currently predicted mask, for T steps. After
every step the prompts are re-selected from the similarity of the prior's parts to the refreshed
embedding. The final mask is decoded from the ORIGINAL embedding with the refined prompts
(done by the engine). Defaults: T = 5, eta = 1e-3, gamma = 0.1, gradient norm clipped to 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from .decoder import decode, encode_prompts
from .parts import argmax_xy, similarity_maps


@dataclass(frozen=True)
class RegrafConfig:
    steps: int = 5
    eta: float = 1e-3
    gamma: float = 0.1
    clip: float = 1.0  # max L2 norm of the gradient per step
    seed: int = 0


def refine_points(
    sam,
    features: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    pos_protos: torch.Tensor,
    neg_protos: torch.Tensor | None,
    points: np.ndarray,
    labels: np.ndarray,
    argmin_negative: bool,
    cfg: RegrafConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Refined (points, labels) for one candidate; points (x, y) in original pixels.

    pos_protos: n_pos x C part prototypes (one positive point each); neg_protos: n_neg x C
    background prototypes (medical) or None (natural: one negative at the argmin of the mean
    positive map, when the candidate has a negative).
    """
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    n_neg = int((labels == 0).sum())
    with torch.inference_mode(False), torch.enable_grad():
        z = features.detach().clone()
        for _ in range(cfg.steps):
            z.requires_grad_(True)
            pts = torch.as_tensor(transform.apply_coords(points.astype(np.float64), original_size), dtype=torch.float, device=z.device)
            prompts = encode_prompts(sam, [pts], [torch.as_tensor(labels, dtype=torch.float, device=z.device)])
            low, _ = decode(sam, z, prompts, chunk_tokens=10**9)
            score = (low * (low > 0)).sum()
            (grad,) = torch.autograd.grad(score, z)
            norm = float(grad.norm())
            if norm > cfg.clip:
                grad = grad * (cfg.clip / norm)
            noise = torch.randn(z.shape, generator=gen).to(z.device)
            z = (z + cfg.eta * grad + math.sqrt(2 * cfg.gamma * cfg.eta) * noise).detach()
            with torch.no_grad():
                protos = pos_protos if neg_protos is None else torch.cat([pos_protos, neg_protos])
                maps = similarity_maps(sam, protos, z[0], input_size, original_size)
                pos_xy = argmax_xy(maps[: len(pos_protos)])
                if n_neg == 0:
                    neg_xy = np.zeros((0, 2), np.int64)
                elif neg_protos is None or argmin_negative:
                    neg_xy = argmax_xy(maps[: len(pos_protos)].mean(0, keepdim=True), largest=False)
                else:
                    neg_xy = argmax_xy(maps[len(pos_protos) :])
            points = np.concatenate([pos_xy, neg_xy])
            labels = np.concatenate([np.ones(len(pos_xy), np.int64), np.zeros(len(neg_xy), np.int64)])
    return points, labels
