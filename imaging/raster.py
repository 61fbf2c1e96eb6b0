"""Polygon <-> mask conversion on one slice, in continuous pixel-index coordinates.

Coordinates here are ``(row, col)`` continuous indices of one 2-D slice: pixel ``(r, c)``
has its **centre** at ``(r, c)`` and covers ``[r-0.5, r+0.5] x [c-0.5, c+0.5]``.

Convention (chosen so that mask -> contour -> mask is exact):

* ``mask_to_rings`` traces **pixel-edge outlines**: ring vertices are pixel corners
  (half-integer indices). Foreground is 4-connected (diagonal-only neighbours give
  separate rings that may touch at a corner). Outer rings run clockwise on screen (row
  axis pointing down), holes counter-clockwise; ``Ring.is_hole`` says which.
* ``rings_to_mask`` fills with the **even-odd rule** over *all* rings of the slice: a
  pixel is inside when its centre is enclosed by an odd number of rings. Holes written as
  separate inner rings (our writer) and keyhole contours (some planning systems) both
  read back correctly; nested islands inside holes too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_FOUR = ndimage.generate_binary_structure(2, 1)
# direction codes: 0 right (+col), 1 down (+row), 2 left, 3 up (clockwise order on screen)
_STEP = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]])


@dataclass
class Ring:
    """A closed polygon, ``points`` (N, 2) as (row, col) continuous indices, not repeated
    at the end. ``is_hole``: counter-clockwise on screen (encloses background)."""

    points: np.ndarray
    is_hole: bool

    @property
    def area_px(self) -> float:
        return abs(signed_area(self.points))


def signed_area(points: np.ndarray) -> float:
    """Shoelace area in pixel^2 of (row, col) points; > 0 for clockwise-on-screen rings."""
    y, x = points[:, 0], points[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def remove_small_islands(mask2d: np.ndarray, min_area_px: float) -> np.ndarray:
    """Drop 4-connected foreground components with fewer than ``min_area_px`` pixels.
    Holes are not filled."""
    mask2d = np.asarray(mask2d, dtype=bool)
    if min_area_px <= 0 or not mask2d.any():
        return mask2d.copy()
    labels, n = ndimage.label(mask2d, structure=_FOUR)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_area_px
    keep[0] = False
    return keep[labels]


def _boundary_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary edges (start corner (row, col), direction code), foreground on the right."""
    p = np.pad(mask, 1)
    fg = p[1:-1, 1:-1]
    sides = [  # (neighbour is background, start corner offset, direction)
        (~p[:-2, 1:-1], (0, 0), 0),   # top edge, left -> right
        (~p[1:-1, 2:], (0, 1), 1),    # right edge, top -> bottom
        (~p[2:, 1:-1], (1, 1), 2),    # bottom edge, right -> left
        (~p[1:-1, :-2], (1, 0), 3),   # left edge, bottom -> top
    ]
    starts, dirs = [], []
    for bg, (dr, dc), code in sides:
        r, c = np.nonzero(fg & bg)
        starts.append(np.stack([r + dr, c + dc], axis=1))
        dirs.append(np.full(len(r), code))
    return np.concatenate(starts), np.concatenate(dirs)


def mask_to_rings(mask2d: np.ndarray) -> list[Ring]:
    """Trace the pixel-edge outlines of a 2-D mask (see module docstring). Every ring has
    at least 4 vertices (collinear vertices removed)."""
    mask = np.asarray(mask2d, dtype=bool)
    if not mask.any():
        return []
    starts, dirs = _boundary_edges(mask)
    width = mask.shape[1] + 2
    key = starts[:, 0] * width + starts[:, 1]
    ends = starts + _STEP[dirs]
    end_key = ends[:, 0] * width + ends[:, 1]
    outgoing: dict[int, list[int]] = {}
    for i, k in enumerate(key.tolist()):
        outgoing.setdefault(k, []).append(i)
    used = np.zeros(len(dirs), dtype=bool)
    rings = []
    dirs_l = dirs.tolist()
    for first in range(len(dirs)):
        if used[first]:
            continue
        corners, e = [], first
        while True:
            used[e] = True
            nxt = outgoing[int(end_key[e])]
            if len(nxt) > 1:  # saddle corner: turn right to hug the current pixel (4-connectivity)
                d = dirs_l[e]
                nxt = sorted(nxt, key=lambda j: (dirs_l[j] - d - 1) % 4)
            following = nxt[0]
            if dirs_l[following] != dirs_l[e]:
                corners.append(ends[e])
            e = following
            if e == first:
                break
        pts = np.asarray(corners, dtype=float) - 0.5  # corner (i, j) sits at index (i-0.5, j-0.5)
        rings.append(Ring(points=pts, is_hole=signed_area(pts) < 0))
    return rings


def rings_to_mask(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Even-odd fill of polygons ((N, 2) (row, col) continuous indices) on an ``shape``
    = (rows, cols) grid: a pixel is set when its centre is inside an odd number of them."""
    rows, cols = shape
    segs = []
    for poly in polygons:
        poly = np.asarray(poly, dtype=float)
        if len(poly) < 3:
            continue
        segs.append(np.concatenate([poly, np.roll(poly, -1, axis=0)], axis=1))
    toggles = np.zeros((rows, cols + 1), dtype=np.int32)
    if segs:
        s = np.concatenate(segs)
        r0, c0, r1, c1 = s.T
        keep = r0 != r1
        r0, c0, r1, c1 = r0[keep], c0[keep], r1[keep], c1[keep]
        lo, hi = np.minimum(r0, r1), np.maximum(r0, r1)
        first = np.clip(np.ceil(lo), 0, rows).astype(np.int64)        # rows with lo <= r < hi
        last = np.clip(np.ceil(hi), 0, rows).astype(np.int64)
        n = np.maximum(last - first, 0)
        idx = np.repeat(np.arange(len(n)), n)
        r = first[idx] + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
        x = c0[idx] + (r - r0[idx]) * (c1[idx] - c0[idx]) / (r1[idx] - r0[idx])
        start = np.clip(np.floor(x).astype(np.int64) + 1, 0, cols)      # pixels with centre c > x
        np.add.at(toggles, (r, start), 1)
    return (np.cumsum(toggles, axis=1)[:, :cols] % 2).astype(bool)
