"""Engine options added for the candidate-selection study (defaults keep the reference behaviour)."""

from __future__ import annotations

import numpy as np
import torch

from models import P2SAMConfig, P2SAMEngine
from models.parts import kmeans_prototypes

from .fixtures import color_sam


def _two_directions_two_sizes() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    f = torch.zeros(40, 4)
    f[:10, 0], f[10:20, 0], f[20:30, 1], f[30:40, 1] = 1.0, 10.0, 1.0, 10.0
    return f + torch.randn(40, 4, generator=gen) * 0.01


def test_kmeans_on_normalised_features_groups_by_direction():
    feats = _two_directions_two_sizes()
    normalized = kmeans_prototypes(feats, 2, seed=0, n_init=10, normalized=True)
    assert sorted(normalized.abs().argmax(1).tolist()) == [0, 1]
    assert torch.allclose(normalized.abs().max(1).values, torch.ones(2), atol=1e-3)
    raw = kmeans_prototypes(feats, 2, seed=0, n_init=10)
    assert raw.abs().max(1).values.min() < 0.999  # raw k-means splits by magnitude and mixes the two


def test_kmeans_space_reaches_the_prior():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    assert P2SAMEngine(color_sam()).set_prior(img, mask).normalized is False  # reference default
    engine = P2SAMEngine(color_sam(), P2SAMConfig(kmeans_space="normalized", pos_range=(1, 2)))
    prior = engine.set_prior(img, mask)
    assert prior.normalized and prior.parts(2) is not None


def test_retrieval_layer_adds_normalised_features_to_the_transport():
    import pytest

    from tests.finetune.helpers import tiny_small

    sam = tiny_small()
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    mask = np.zeros((48, 64), bool)
    mask[10:40, 20:50] = True
    ref = P2SAMEngine(sam, P2SAMConfig(pos_range=(1, 2)))
    deep = P2SAMEngine(sam, P2SAMConfig(pos_range=(1, 2), retrieval_layer="stage4"))
    enc = deep.encode(img)
    assert enc.retrieval.shape == (1, 256 + 16, 8, 8)
    norms = enc.retrieval[0].norm(dim=0)
    assert torch.allclose(norms, torch.full_like(norms, 2**0.5), atol=1e-4)  # two unit-norm halves
    prior = deep.set_prior(enc, mask)
    assert prior.fg_retrieval is not None and len(prior.fg_retrieval) == len(prior.fg_features)
    a, b = ref.segment(img, ref.set_prior(img, mask)), deep.segment(enc, prior)
    assert [c.n_pos for c in a.candidates] == [c.n_pos for c in b.candidates]
    assert all(d <= 8.0 for d in (c.distance for c in b.candidates) if np.isfinite(d))  # |a - b|^2 <= (2 sqrt 2)^2
    assert ref.encode(img).retrieval is None
    with pytest.raises(ValueError, match="retrieval_layer"):
        P2SAMEngine(sam, P2SAMConfig(retrieval_layer="no_such_layer")).encode(img)


def test_size_aware_scores_prefer_the_prior_size_and_keep_empty_candidates_out():
    import math

    from models.retrieval import mask_area_fraction, size_aware_scores

    # a small candidate with the lowest W loses to one of the prior's size once size counts
    distances, areas = [1.0, 1.5, math.inf], [0.01, 0.1, 0.0]
    assert size_aware_scores(distances, areas, 0.1, 0.0) == [1.0 / 1.25, 1.5 / 1.25, math.inf]
    scores = size_aware_scores(distances, areas, 0.1, 1.0)
    assert scores[1] < scores[0] and math.isinf(scores[2])
    assert size_aware_scores([math.inf], [0.0], 0.1, 1.0) == [math.inf]
    low = torch.full((2, 1, 16, 16), -1.0)
    low[0, 0, :4, :8] = 1.0  # 32 of the 8 x 16 valid cells (input 32 x 64 of a 64 frame)
    assert mask_area_fraction(low, (32, 64), 64) == [0.25, 0.0]


def test_size_weight_changes_only_the_choice():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    ref = P2SAMEngine(color_sam(), P2SAMConfig(pos_range=(1, 3)))
    sized = ref.with_config(size_weight=1.0)
    a, b = ref.segment(img, ref.set_prior(img, mask)), sized.segment(img, sized.set_prior(img, mask))
    assert [c.distance for c in a.candidates] == [c.distance for c in b.candidates]
    assert all(c.score == c.distance for c in a.candidates)
    assert all(0.0 <= c.area <= 1.0 for c in b.candidates)
    best = min(range(len(b.candidates)), key=lambda i: (b.candidates[i].score, i))
    assert b.chosen in (best, None)
