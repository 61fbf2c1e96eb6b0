"""Registration-guided candidates and the selection rule (issue 11): planted cases.

Engine cases run the small bundled model (``kvasir``) on synthetic pictures: dark discs on a
mucosa-coloured, noisy background. The propagated mask (``location``) is given directly, as the
pipeline gives the registered prior contour.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from models import P2SAMConfig, P2SAMEngine, load_model
from models.candidates import SelectionWeights, eligible, mask_prompt, overlaps, propagated_box, selection_scores

H, W = 180, 240


def scene(centres, seed=0, colour=(150, 40, 50), radius=28):
    """A noisy mucosa-like picture with a dark disc at each (x, y) centre, and each disc's mask."""
    rng = np.random.default_rng(seed)
    img = np.empty((H, W, 3), np.float32)
    img[:] = (225, 150, 135)
    img += rng.normal(0, 6, (H, W, 1))
    yy, xx = np.mgrid[:H, :W]
    masks = []
    for cx, cy in centres:
        m = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        img[m] = np.array(colour) + rng.normal(0, 6, (int(m.sum()), 1))
        masks.append(m)
    return np.clip(img, 0, 255).astype(np.uint8), masks


def dice(a, b):
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture(scope="module")
def located():
    """An engine with the location rule on (few candidates: a small test), a prior with the disc on the left."""
    engine = P2SAMEngine(load_model("kvasir").sam, P2SAMConfig(pos_range=(1, 1), neg_range=(1, 1), location=True,
                                                               location_parts=1, absent_ratio=1.0))
    image, (left,) = scene([(60, 90)])
    return engine, engine.set_prior(image, left), left


# --- the rule, on planted signals -----------------------------------------------------------

def test_location_wins_between_two_similar_looking_candidates():
    """Two candidates that look alike (the same W), the prior's structure on the left: retrieval
    alone takes the first; the rule takes the one on the propagated mask."""
    w = SelectionWeights()
    distances, overlap, areas, ious = [10.0, 10.0], [0.0, 0.8], [0.05, 0.05], [0.9, 0.9]
    scores = selection_scores(distances, overlap, areas, 0.05, ious, w)
    assert min(range(2), key=lambda i: (distances[i], i)) == 0  # retrieval: a tie, the first
    assert min(range(2), key=lambda i: scores[i]) == 1
    # a location candidate that looks much worse than the best point candidate is not eligible
    assert eligible(["points", "box"], [10.0, 10.0 * w.location_gate + 1], w, None) == [True, False]
    assert eligible(["points", "box"], [10.0, 10.0 * w.location_gate], w, None) == [True, True]


def test_background_looking_candidates_are_not_eligible():
    w = SelectionWeights(absent_ratio=1.0)
    assert eligible(["points", "box"], [50.0, 40.0], w, absent_distance=45.0) == [False, True]
    # no point candidate found anything: no location candidate either (not found stays possible)
    assert eligible(["points", "box"], [math.inf, 10.0], w, None) == [False, False]


def test_propagated_box_has_a_margin_and_stays_in_the_picture():
    mask = np.zeros((50, 60), bool)
    mask[10:20, 0:30] = True  # rows 10..19, columns 0..29
    assert propagated_box(mask, 0.1).tolist() == [0.0, 9.0, 32.0, 20.0]
    assert propagated_box(np.zeros((5, 5), bool), 0.1) is None


def test_mask_prompt_and_overlap_on_the_low_res_grid():
    sam = load_model("kvasir").sam
    mask = np.zeros((H, W), bool)
    mask[:, : W // 2] = True
    prompt = mask_prompt(sam, mask)
    side = 4 * sam.prompt_encoder.image_embedding_size[0]
    assert prompt.shape == (1, 1, side, side)
    inside = prompt[0, 0] > 0
    # resized like the image (longest side -> the model's input), padded at the bottom as background
    rows = int(round(H * side / W))
    assert inside[: rows - 1, : side // 2 - 1].all() and not inside[:, side // 2 + 1 :].any() and not inside[rows + 1 :].any()
    assert overlaps(prompt.repeat(2, 1, 1, 1) * torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1), prompt) == pytest.approx([1.0, 0.0])


# --- the engine, on planted pictures ----------------------------------------------------------

def test_appearance_wins_when_the_structure_moved_far(located):
    """The disc moved to the far right; the propagated mask still says left (registration could
    not follow): the box on the left looks like background and is not chosen."""
    engine, prior, left = located
    image, (moved,) = scene([(190, 120)], seed=2)
    seg = engine.segment(image, prior, location=left)
    assert seg.selection == "location" and seg.found
    assert dice(seg.mask, moved) > 0.7 and not (seg.mask & left).any()
    box = next(c for c in seg.candidates if c.kind == "box")
    assert not box.eligible and box.distance > 5 * seg.best.distance
    report = json.loads(json.dumps(seg.to_dict()))  # every candidate's signals reach result.json
    assert {c["kind"] for c in report["candidates"]} == {"points", "box", "box_points", "mask_points"}
    assert all({"overlap", "area_change", "selection_score", "eligible", "distance", "iou_pred"} <= set(c) for c in report["candidates"])


def test_nothing_found_when_the_structure_disappeared(located):
    """The follow-up has no disc (response to treatment): an empty mask and found false, not a
    box-shaped blob at the propagated location, although plain retrieval would still answer."""
    engine, prior, left = located
    image, _ = scene([], seed=3)
    seg = engine.segment(image, prior, location=left)
    assert not seg.found and seg.chosen is None and not seg.mask.any()
    assert seg.to_dict()["found"] is False
    assert all(not c.eligible for c in seg.candidates)
    assert seg.retrieval_chosen is not None  # the old rule picks something: a false positive
    assert seg.candidate_mask(engine.sam, seg.retrieval_chosen, (192, 256)).any()


def test_without_location_the_engine_is_the_reference(located):
    engine, prior, left = located
    image, (moved,) = scene([(70, 95)], seed=4)
    plain = engine.with_config(location=False).segment(image, prior)
    with_loc_off = engine.with_config(location=False).segment(image, prior, location=left)
    assert plain.selection == with_loc_off.selection == "retrieval"
    assert [c.kind for c in plain.candidates] == ["points"] and np.array_equal(plain.mask, with_loc_off.mask)
    box = engine.segment(image, prior, method="box", location=np.roll(left, 30, axis=1))
    assert box.candidates[0].box.tolist() == [62.0, 62.0, 118.0, 118.0]  # the propagated mask's box, not the prior's


def test_location_must_match_the_target_size(located):
    engine, prior, left = located
    image, _ = scene([(70, 95)], seed=4)
    with pytest.raises(ValueError, match="location mask"):
        engine.segment(image, prior, location=left[:-1])
