"""Known answers for the prior's parts and for point prompts (coordinates, padding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from models import EngineInputError, P2SAMEngine
from models.parts import mask_to_grid

from .fixtures import color_sam

GREY = (128, 128, 128)
RED, GREEN, BLUE = (220, 30, 30), (30, 200, 40), (40, 50, 230)


def _image(h: int, w: int, fill=GREY) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = fill
    return img


def test_planted_parts_are_recovered():
    """Three colour stripes inside the mask -> k-means with n=3 finds exactly those three colours."""
    sam = color_sam()
    engine = P2SAMEngine(sam)
    img = _image(64, 64)
    img[8:56, 8:24] = RED
    img[8:56, 24:40] = GREEN
    img[8:56, 40:56] = BLUE
    mask = np.zeros((64, 64), bool)
    mask[8:56, 8:56] = True
    prior = engine.set_prior(img, mask)
    assert int(prior.grid_mask.sum()) == 36  # 6 x 6 cells
    parts = prior.parts(3)
    planted = torch.stack([sam.image_encoder.feature_of(c) for c in (RED, GREEN, BLUE)])
    planted = planted / planted.norm(dim=1, keepdim=True)
    cos = parts @ planted.T  # 3 x 3
    # every found part is one planted colour, and every colour is found once
    assert torch.all(cos.max(dim=1).values > 0.999)
    assert sorted(cos.argmax(dim=1).tolist()) == [0, 1, 2]
    # one part = the normalised mean of all foreground cells
    mean = prior.fg_features.mean(0)
    assert torch.allclose(prior.parts(1)[0], mean / mean.norm(), atol=1e-6)
    # determinism of the clustering (fixed seed, explicit n_init)
    again = P2SAMEngine(sam).set_prior(img, mask).parts(3)
    assert torch.equal(parts, again)


def test_mask_to_grid_single_cell_and_smaller():
    sam = color_sam()
    one_cell = np.zeros((64, 64), bool)
    one_cell[16:24, 40:48] = True  # exactly grid cell (row 2, col 5)
    grid = mask_to_grid(one_cell, sam, 8)
    assert grid.sum() == 1 and bool(grid[2, 5])
    tiny = np.zeros((64, 64), bool)
    tiny[17:19, 41:43] = True  # 2x2 pixels inside that cell: below the 0.5 threshold
    grid = mask_to_grid(tiny, sam, 8)
    assert grid.sum() == 1 and bool(grid[2, 5])


def test_mask_to_grid_padding_is_background():
    """A 32 x 64 image is padded to 64 x 64: the lower half of the grid is padding."""
    sam = color_sam()
    full = np.ones((32, 64), bool)
    grid = mask_to_grid(full, sam, 8)
    assert grid[:4].all() and not grid[4:].any()


def test_point_coordinates_non_square_hand_computed():
    """Image 40 x 80 (H x W): scale 64/80 = 0.8, input 32 x 64, padded to 64 x 64, grid 8 x 8.

    The target has the prior's colour only in grid cell (row 1, col 5) = input pixels rows 8-15,
    cols 40-47 = original rows 10-19, cols 50-59. The cell centre in the input frame is
    (x, y) = (44, 12), i.e. (55, 15) in original continuous coordinates, pixel (54.5, 14.5).
    """
    sam = color_sam()
    engine = P2SAMEngine(sam)
    prior_img = _image(40, 80)
    prior_img[10:30, 10:40] = RED
    prior_mask = np.zeros((40, 80), bool)
    prior_mask[10:30, 10:40] = True
    prior = engine.set_prior(prior_img, prior_mask)

    target = _image(40, 80)
    target[10:20, 50:60] = RED
    result = engine.segment(target, prior, method="fixed", n_pos=1, n_neg=1)
    x, y = result.candidates[0].points[0]
    assert result.candidates[0].labels.tolist() == [1, 0]
    assert abs(x - 54.5) <= 1.5 and abs(y - 14.5) <= 1.5, (x, y)
    # the same point in SAM's input frame, as the decoder receives it
    xy_in = ResizeLongestSide(64).apply_coords(np.array([[x, y]], float), (40, 80))[0]
    assert np.allclose(xy_in, [x * 0.8, y * 0.8])


def test_points_never_land_in_padding():
    """Padding has the pixel-mean colour; a prior of that colour must still point inside the image."""
    sam = color_sam()
    engine = P2SAMEngine(sam)
    mean_rgb = (124, 116, 104)  # ~ SAM's pixel mean: its normalised value is ~0, like padding
    prior_img = _image(32, 64, fill=(250, 250, 250))
    prior_img[8:24, 8:24] = mean_rgb
    mask = np.zeros((32, 64), bool)
    mask[8:24, 8:24] = True
    prior = engine.set_prior(prior_img, mask)
    target = _image(32, 64, fill=(250, 250, 250))
    target[16:24, 48:56] = mean_rgb
    result = engine.segment(target, prior, method="fixed", n_pos=1, n_neg=0)
    x, y = result.candidates[0].points[0]
    assert 0 <= y < 32 and 0 <= x < 64
    assert 44 <= x <= 59 and 12 <= y <= 27, (x, y)


def test_empty_prior_mask_is_refused():
    engine = P2SAMEngine(color_sam())
    with pytest.raises(EngineInputError, match="empty"):
        engine.set_prior(_image(64, 64), np.zeros((64, 64), bool))


def test_prior_mask_shape_must_match_image():
    engine = P2SAMEngine(color_sam())
    with pytest.raises(EngineInputError, match="must match"):
        engine.set_prior(_image(64, 64), np.ones((32, 64), bool))


def test_non_uint8_image_is_refused():
    engine = P2SAMEngine(color_sam())
    with pytest.raises(EngineInputError, match="uint8"):
        engine.encode(np.zeros((64, 64), np.float32))
