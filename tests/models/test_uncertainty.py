"""Uncertainty samplers and the latent head: shapes, determinism, and that they respond to their knobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import P2SAMEngine, build_sam
from models.latent import LatentHead, load_latent, save_latent
from models.latent_train import LatentTrainConfig, perturb_mask, train_latent_head
from models.uncertainty import SamplerConfig, sample


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    engine = P2SAMEngine(build_sam("small"))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    img[30:90, 40:120] = (200, 80, 60)
    mask = np.zeros((120, 160), bool)
    mask[30:90, 40:120] = True
    prior = engine.set_prior(img, mask)
    enc = engine.encode(np.roll(img, 5, axis=1))
    seg = engine.segment(enc, prior)
    return engine, enc, seg, img, mask


@pytest.mark.parametrize("kind", ["prompt_noise", "retrieval"])
def test_samplers_give_k_masks_deterministically(setup, kind):
    engine, enc, seg, _, _ = setup
    cfg = SamplerConfig(kind=kind, k=6, seed=1)
    a, b = sample(engine, enc, seg, cfg), sample(engine, enc, seg, cfg)
    assert a.masks.shape == (6, 120, 160) and a.masks.dtype == bool
    assert a.probability.shape == (120, 160) and 0 <= a.probability.min() and a.probability.max() <= 1
    assert np.array_equal(a.masks, b.masks)


def test_prompt_noise_scale_controls_spread(setup):
    engine, enc, seg, _, _ = setup
    quiet = sample(engine, enc, seg, SamplerConfig(k=8, scale=0.0))
    loud = sample(engine, enc, seg, SamplerConfig(k=8, scale=3.0))
    assert all(np.array_equal(m, quiet.masks[0]) for m in quiet.masks)  # no noise: identical samples
    assert not all(np.array_equal(m, loud.masks[0]) for m in loud.masks)


def test_retrieval_weights_follow_distances(setup):
    engine, enc, seg, _, _ = setup
    s = sample(engine, enc, seg, SamplerConfig(kind="retrieval", k=4, tau=0.05))
    d = np.array([c.distance for c in seg.candidates])
    assert s.weights is not None and np.isclose(s.weights.sum(), 1.0)
    assert int(np.argmax(s.weights)) == int(np.argmin(d))


def test_perturbed_masks_differ_but_overlap():
    rng = np.random.default_rng(0)
    mask = np.zeros((100, 100), bool)
    mask[30:70, 25:75] = True
    others = [perturb_mask(mask, rng) for _ in range(10)]
    dices = [2 * (m & mask).sum() / (m.sum() + mask.sum()) for m in others]
    assert all(0.6 < d < 1.0 for d in dices) and len({m.tobytes() for m in others}) > 5


def test_latent_head_trains_saves_and_samples(setup, tmp_path):
    engine, enc, seg, img, mask = setup
    head, history = train_latent_head(engine, [(img, mask)] * 4, LatentTrainConfig(epochs=3, batch_size=2, lr=3e-3))
    assert len(history.losses) == 3 and all(np.isfinite(history.losses))
    path = save_latent(head, tmp_path / "latent.pt", base_sha256="abc", card={"data": "test"})
    loaded = load_latent(path, base_sha256="abc")
    s1 = sample(engine, enc, seg, SamplerConfig(kind="latent", k=5), latent_head=loaded)
    s2 = sample(engine, enc, seg, SamplerConfig(kind="latent", k=5), latent_head=loaded)
    assert s1.masks.shape == (5, 120, 160) and np.array_equal(s1.masks, s2.masks)


def test_latent_sampler_needs_a_head(setup):
    engine, enc, seg, _, _ = setup
    with pytest.raises(ValueError, match="latent head"):
        sample(engine, enc, seg, SamplerConfig(kind="latent", k=2))


def test_fresh_latent_head_is_neutral(setup):
    """The token MLP starts at zero: an untrained head reproduces the deterministic final step."""
    engine, enc, seg, _, _ = setup
    head = LatentHead().eval()
    s = sample(engine, enc, seg, SamplerConfig(kind="latent", k=3), latent_head=head)
    assert all(np.array_equal(m, s.masks[0]) for m in s.masks)
