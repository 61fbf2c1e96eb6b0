"""Engine behaviour: determinism, batched == unbatched, edge-case masks, 'not found', reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models import P2SAMConfig, P2SAMEngine, build_sam

from .fixtures import color_sam


@pytest.fixture(scope="module")
def small_engine():
    torch.manual_seed(0)
    return P2SAMEngine(build_sam("small"))


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (180, 240, 3), dtype=np.uint8)
    img[40:120, 60:170] = (200, 80, 60)
    target = np.roll(img, (10, -15), axis=(0, 1))
    mask = np.zeros((180, 240), bool)
    mask[40:120, 60:170] = True
    return img, mask, target


def test_two_runs_are_identical(small_engine, case):
    img, mask, target = case
    a = small_engine.segment(target, small_engine.set_prior(img, mask))
    b = P2SAMEngine(small_engine.sam).segment(target, P2SAMEngine(small_engine.sam).set_prior(img, mask))
    assert np.array_equal(a.mask, b.mask)
    assert [c.distance for c in a.candidates] == [c.distance for c in b.candidates]
    assert a.best.n_pos == b.best.n_pos


def test_batched_equals_unbatched(small_engine, case):
    img, mask, target = case
    prior = small_engine.set_prior(img, mask)
    batched = small_engine.segment(target, prior)
    single = small_engine.with_config(batched=False).segment(target, prior)
    assert (batched.best.n_pos, batched.best.n_neg) == (single.best.n_pos, single.best.n_neg)
    assert np.array_equal(batched.mask, single.mask)
    assert np.allclose([c.distance for c in batched.candidates], [c.distance for c in single.candidates], rtol=1e-5)


def test_retrieval_grid_and_report(small_engine, case):
    img, mask, target = case
    engine = small_engine.with_config(pos_range=(1, 3), neg_range=(1, 2))
    result = engine.segment(target, engine.set_prior(img, mask))
    assert [(c.n_pos, c.n_neg) for c in result.candidates] == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)]
    for cand in result.candidates:
        assert len(cand.points) == cand.n_pos + cand.n_neg
        assert cand.labels.tolist() == [1] * cand.n_pos + [0] * cand.n_neg
        assert ((cand.points >= 0) & (cand.points < [240, 180])).all()
    best = min(range(6), key=lambda i: (result.candidates[i].distance, i))
    assert result.chosen == best
    report = json.loads(json.dumps(result.to_dict()))
    assert report["n_pos"] == result.best.n_pos and len(report["candidates"]) == 6
    assert {"encode", "prompts", "decode", "transport", "total"} <= set(report["timings_s"])
    assert result.mask.shape == (180, 240) and result.logits.shape == (180, 240)


@pytest.mark.parametrize("method", ["direct", "persam", "fixed"])
def test_baselines_run_on_the_same_backbone(small_engine, case, method):
    img, mask, target = case
    prior = small_engine.set_prior(img, mask)
    result = small_engine.segment(target, prior, method=method, n_pos=3)
    assert result.method == method
    assert len(result.candidates) == 1
    if method == "persam":
        assert result.candidates[0].labels.tolist() == [1, 0]
    if method == "fixed":
        assert result.candidates[0].n_pos == 3


def test_nothing_found_returns_empty_mask_not_exception(case):
    """A decoder that predicts background everywhere: every candidate is empty -> 'not found'."""
    torch.manual_seed(0)
    sam = build_sam("small")
    for mlp in sam.mask_decoder.output_hypernetworks_mlps:
        torch.nn.init.zeros_(mlp.layers[-1].weight)
        torch.nn.init.zeros_(mlp.layers[-1].bias)
    engine = P2SAMEngine(sam)
    img, mask, target = case
    result = engine.segment(target, engine.set_prior(img, mask))
    assert not result.found and result.chosen is None and not result.mask.any()
    assert all(np.isinf(c.distance) for c in result.candidates)
    assert any("not found" in w for w in result.warnings)
    assert result.to_dict()["distance"] is None


def test_whole_image_mask_has_no_negatives():
    engine = P2SAMEngine(color_sam())
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :32] = (200, 20, 20)
    img[:, 32:] = (20, 20, 200)
    prior = engine.set_prior(img, np.ones((64, 64), bool))
    assert any("no negative" in w for w in prior.warnings)
    result = engine.segment(img, prior)
    assert all(c.n_neg == 0 for c in result.candidates)
    assert [c.n_pos for c in result.candidates] == [1, 2]  # only 2 distinct colours -> at most 2 parts


def test_single_cell_mask_gives_one_candidate():
    engine = P2SAMEngine(color_sam())
    img = np.full((64, 64, 3), 90, np.uint8)
    img[16:24, 40:48] = (250, 10, 10)
    mask = np.zeros((64, 64), bool)
    mask[16:24, 40:48] = True
    prior = engine.set_prior(img, mask)
    assert len(prior.fg_features) == 1
    result = engine.segment(img, prior)
    assert [(c.n_pos, c.n_neg) for c in result.candidates] == [(1, 1)]


def test_natural_mode_uses_argmin_negative_and_multimask(case):
    engine = P2SAMEngine(color_sam(), P2SAMConfig(mode="natural", pos_range=(1, 2)))
    img = np.full((64, 64, 3), 90, np.uint8)
    img[8:40, 8:40] = (250, 10, 10)
    img[48:60, 48:60] = (10, 250, 10)  # least similar to the red prior: the negative goes here
    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:40] = True
    result = engine.segment(img, engine.set_prior(img, mask))
    assert engine.config.multimask
    neg = result.candidates[0].points[result.candidates[0].labels == 0][0]
    assert 46 <= neg[0] <= 61 and 46 <= neg[1] <= 61, neg


def test_regraf_refines_the_chosen_candidate(small_engine, case):
    from models.regraf import RegrafConfig

    img, mask, target = case
    prior = small_engine.set_prior(img, mask)
    plain = small_engine.segment(target, prior)
    refined_engine = small_engine.with_config(regraf=RegrafConfig(eta=50.0, gamma=0.0))
    refined = refined_engine.segment(target, prior)
    best = refined.best
    assert best.unrefined_points is not None and np.array_equal(best.unrefined_points, plain.best.points)
    assert "regraf" in refined.timings
    assert len(best.points) == len(best.unrefined_points) and best.labels.tolist() == plain.best.labels.tolist()
    again = refined_engine.segment(target, prior)  # seeded noise: deterministic
    assert np.array_equal(again.mask, refined.mask) and np.array_equal(again.best.points, best.points)
    moved = not np.array_equal(best.points, best.unrefined_points)
    assert moved, "a large step size must move at least one prompt"
