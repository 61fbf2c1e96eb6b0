"""Wasserstein retrieval: planted answers, ties, empty candidates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.retrieval import cost_matrix, pick_best, wasserstein


def _cloud(center, n, seed):
    rng = np.random.default_rng(seed)
    return np.asarray(center, float) + 0.1 * rng.standard_normal((n, len(center)))


def test_retrieval_picks_the_planted_best_candidate():
    prior = np.concatenate([_cloud([0, 0, 5], 20, 0), _cloud([5, 0, 0], 10, 1)])
    candidates = [
        _cloud([0, 0, 5], 30, 2),  # only one of the two parts
        np.concatenate([_cloud([0, 0, 5], 21, 3), _cloud([5, 0, 0], 9, 4)]),  # both parts, right mix
        np.concatenate([_cloud([0, 0, 5], 10, 5), _cloud([5, 0, 0], 10, 6), _cloud([0, 5, 0], 10, 7)]),  # leaks
        np.zeros((0, 3)),  # empty
    ]
    distances = [wasserstein(prior, c) for c in candidates]
    assert math.isinf(distances[3])
    assert pick_best(distances) == 1
    assert pick_best([wasserstein(prior, c, cost="cosine") for c in candidates]) == 1


def test_identical_cloud_has_zero_distance():
    prior = _cloud([1, 2, 3], 15, 0)
    assert wasserstein(prior, prior.copy()) == pytest.approx(0.0, abs=1e-9)


def test_exact_value_by_hand():
    """Two single points at squared distance 4 + 9 = 13; cosine of orthogonal vectors = 1."""
    assert wasserstein(np.array([[0.0, 0.0]]), np.array([[2.0, 3.0]])) == pytest.approx(13.0)
    assert wasserstein(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]]), cost="cosine") == pytest.approx(1.0)


def test_ties_go_to_fewer_parts_and_all_empty_is_none():
    assert pick_best([2.0, 1.0, 1.0, 3.0]) == 1
    assert pick_best([math.inf, math.inf]) is None
    assert pick_best([]) is None


def test_unknown_cost_is_refused():
    with pytest.raises(ValueError, match="unknown cost"):
        cost_matrix(np.zeros((1, 2)), np.zeros((1, 2)), "hamming")  # type: ignore[arg-type]
