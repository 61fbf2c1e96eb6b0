"""The prior-box baseline (method ``box``): the prior mask's box, scaled to the target, as the prompt."""

from __future__ import annotations

import numpy as np

from models import P2SAMEngine
from models.engine import prior_box_on

from .fixtures import color_sam


def test_box_is_the_prior_masks_box_scaled_to_the_target_size():
    engine = P2SAMEngine(color_sam())
    prior_img = np.zeros((40, 60, 3), np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[10:20, 30:45] = True  # rows 10..19, columns 30..44
    prior = engine.set_prior(prior_img, mask)
    assert prior.box.tolist() == [30, 10, 44, 19]
    assert prior_box_on(prior, (40, 60)).tolist() == [30, 10, 44, 19]
    # a target twice as large: the box covers the same part of the picture (pixel edges scale)
    assert prior_box_on(prior, (80, 120)).tolist() == [60, 20, 89, 39]
    seg = engine.segment(np.zeros((80, 120, 3), np.uint8), prior, method="box")
    assert seg.method == "box" and seg.chosen in (0, None) and len(seg.candidates) == 1
    assert seg.candidates[0].box.tolist() == [60, 20, 89, 39] and len(seg.candidates[0].points) == 0
