"""Parts of the prior: the prior mask on the feature grid, k-means part prototypes, point prompts.

Conventions: feature maps are ``C x g x g`` (row, column); masks are ``H x W`` (row, column);
point prompts are ``(x, y)`` = (column, row) in pixels of the ORIGINAL image, as in
``SamPredictor.predict``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from torch.nn import functional as F


def mask_to_grid(mask: np.ndarray, sam: Sam, grid: int) -> torch.Tensor:
    """Prior mask (H x W bool) -> feature-grid mask (g x g bool).

    Same resize and padding as the image (``ResizeLongestSide`` + pad bottom/right), then
    bilinear down-sampling of the 0/1 mask to the grid and a threshold at 0.5; padding counts as
    background. A non-empty mask that covers no grid cell that far (a structure smaller than one
    cell) keeps the cell(s) it covers most, so small structures still get a prototype.
    """
    img_size = sam.image_encoder.img_size
    resized = ResizeLongestSide(img_size).apply_image(np.repeat(mask.astype(np.uint8)[..., None] * 255, 3, axis=2))
    canvas = np.zeros((img_size, img_size), dtype=np.float32)
    canvas[: resized.shape[0], : resized.shape[1]] = resized[..., 0] / 255.0
    down = F.interpolate(torch.from_numpy(canvas)[None, None], size=(grid, grid), mode="bilinear", align_corners=False)[0, 0]
    cells = down > 0.5
    if not bool(cells.any()) and bool(mask.any()):
        area = F.adaptive_avg_pool2d(torch.from_numpy(canvas)[None, None], (grid, grid))[0, 0]
        cells = (area >= area.max() - 1e-6) & (area > 0)
    return cells


def kmeans_prototypes(features: torch.Tensor, n: int, seed: int, n_init: int, normalized: bool = False) -> torch.Tensor | None:
    """n L2-normalised part prototypes of ``features`` (N x C), or None if n parts do not exist.

    n = 1: the normalised mean. n > 1: k-means++ (scikit-learn ``KMeans``, ``random_state=seed``,
    ``n_init`` explicit), each part = the normalised mean of its members, ordered by cluster
    label. None when there are fewer distinct feature vectors than n, or k-means leaves a part
    empty. ``normalized``: cluster the L2-normalised features instead of the raw ones (the
    similarity maps are cosine, so parts then live in the space they are compared in).
    """
    if normalized:
        features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if n == 1:
        proto = features.mean(0, keepdim=True)
    else:
        data = features.float().cpu().numpy()
        if len(np.unique(data, axis=0)) < n:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels_np = KMeans(n_clusters=n, random_state=seed, n_init=n_init).fit_predict(data)
        if len(np.unique(labels_np)) < n:
            return None
        labels = torch.from_numpy(labels_np).to(features.device)
        proto = torch.stack([features[labels == c].mean(0) for c in range(n)])
    return proto / proto.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def similarity_maps(
    sam: Sam,
    prototypes: torch.Tensor,
    target_features: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
) -> torch.Tensor:
    """Cosine similarity of K prototypes (K x C, normalised) with the target (C x g x g).

    Returned at the original image size (K x H x W), up-sampled the reference's way: x4
    bilinear, then ``Sam.postprocess_masks`` (to the input frame, crop the padding, resize).
    """
    c, h, w = target_features.shape
    feats = target_features / target_features.norm(dim=0, keepdim=True).clamp_min(1e-12)
    sim = (prototypes @ feats.reshape(c, h * w)).reshape(1, -1, h, w)
    sim = F.interpolate(sim, scale_factor=4, mode="bilinear")
    return sam.postprocess_masks(sim, input_size=input_size, original_size=original_size)[0]


def argmax_xy(maps: torch.Tensor, largest: bool = True) -> np.ndarray:
    """Per map (K x H x W) the (x, y) pixel of the maximum (or minimum): K x 2 int array."""
    k, h, w = maps.shape
    flat = maps.reshape(k, h * w)
    idx = flat.argmax(dim=1) if largest else flat.argmin(dim=1)
    rows = torch.div(idx, w, rounding_mode="floor")
    cols = idx - rows * w
    return torch.stack([cols, rows], dim=1).cpu().numpy().astype(np.int64)


def box_of(mask: torch.Tensor) -> np.ndarray | None:
    """(x0, y0, x1, y1) inclusive pixel box of a H x W bool mask, None if empty."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if xs.numel() == 0:
        return None
    return np.array([xs.min().item(), ys.min().item(), xs.max().item(), ys.max().item()], dtype=np.float64)
