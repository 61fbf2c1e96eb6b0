"""Fast retrieval: pruning after cascade step (a), one decode per distinct prompt set, batched
encoding. Each is checked against the reference (every candidate fully cascaded, one by one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.speed import synthetic_case
from models import P2SAMConfig, P2SAMEngine, build_sam, load_model
from models.cascade import CascadeInput, run_cascade

from .fixtures import color_sam


class RowCounter:
    """Decoder rows decoded (candidates x calls), read from a forward hook on the IoU head, which
    the decoder runs once per decoded batch."""

    def __init__(self, sam):
        self.rows = 0
        self._hook = sam.mask_decoder.iou_prediction_head.register_forward_hook(self._count)

    def _count(self, module, inputs, output):
        self.rows += output.shape[0]

    def close(self):
        self._hook.remove()


@pytest.fixture(scope="module")
def kvasir():
    return load_model("kvasir").sam


@pytest.fixture(scope="module")
def planted():
    """A red ellipse on a textured image, and three shifted, shrunk follow-ups (bench.speed's case)."""
    return synthetic_case(192, 3)


def test_pruning_keeps_the_reference_choice_on_planted_cases(kvasir, planted):
    """Refined candidates are exactly the reference's; the pruned choice is the reference's
    whenever the reference's winner survives step (a), and differs only when it does not."""
    prior_img, prior_mask, targets = planted
    ref = P2SAMEngine(kvasir, P2SAMConfig(pos_range=(1, 5), neg_range=(1, 3)))
    prior = ref.set_prior(prior_img, prior_mask)
    for target in targets:
        enc = ref.encode(target)
        r, p = ref.segment(enc, prior), ref.with_config(prune_k=3).segment(enc, prior)
        assert r.found and p.found and all(c.refined for c in r.candidates)
        refined = [i for i, c in enumerate(p.candidates) if c.refined]
        order = sorted(range(15), key=lambda i: (p.candidates[i].step_a_score, i))
        assert refined == sorted(order[:3])  # the best 3 by their step (a) score
        for i in refined:
            assert torch.allclose(p.candidate_logits[i], r.candidate_logits[i], atol=1e-4)
            assert p.candidates[i].distance == pytest.approx(r.candidates[i].distance, rel=1e-6)
        assert p.chosen == min(refined, key=lambda i: (r.candidates[i].distance, i))
        assert (p.chosen == r.chosen) == (r.chosen in refined)
        # keep enough candidates for the reference's winner to survive step (a): its choice, its mask
        k = order.index(r.chosen) + 1
        q = ref.with_config(prune_k=k).segment(enc, prior)
        assert q.chosen == r.chosen and np.array_equal(q.mask, r.mask)
        assert sum(c.refined for c in q.candidates) == k


def test_pruning_cuts_decoder_rows(kvasir, planted):
    prior_img, prior_mask, targets = planted
    ref = P2SAMEngine(kvasir, P2SAMConfig(pos_range=(1, 5), neg_range=(1, 3)))
    prior = ref.set_prior(prior_img, prior_mask)
    enc = ref.encode(targets[0])
    counts = {}
    for k in (0, 2):
        counter = RowCounter(kvasir)
        ref.with_config(prune_k=k).segment(enc, prior)
        counter.close()
        counts[k] = counter.rows
    assert counts == {0: 15 * 3, 2: 15 + 2 * 2}


def _inputs(points_list):
    return [CascadeInput(points=np.array(p, np.int64), labels=np.array(lab, np.int64)) for p, lab in points_list]


def test_candidates_with_one_point_set_share_one_decode():
    sam = color_sam()
    torch.manual_seed(2)
    features = torch.randn(1, 256, 8, 8)
    a = ([[10, 20], [40, 33], [5, 60]], [1, 1, 0])
    b = ([[30, 30], [12, 50]], [1, 0])
    a_perm = ([[40, 33], [10, 20], [5, 60]], [1, 1, 0])  # same set, other order
    inputs = _inputs([a, b, a_perm, b])
    counter = RowCounter(sam)
    shared = run_cascade(sam, features, inputs, (64, 64), (64, 64), share=True)
    rows_shared = counter.rows
    alone = run_cascade(sam, features, inputs, (64, 64), (64, 64), share=False, batched=False)
    counter.close()
    assert rows_shared == 2 * 3  # two distinct prompt sets x three cascade steps
    assert counter.rows - rows_shared == 4 * 3
    assert shared.shared_with == [0, 1, 0, 1] and shared.decoded == 2
    assert torch.allclose(shared.low_res, alone.low_res, atol=1e-4)
    assert torch.allclose(shared.iou, alone.iou, atol=1e-5)


def test_engine_decodes_each_distinct_prompt_once(kvasir, planted):
    prior_img, prior_mask, targets = planted
    engine = P2SAMEngine(kvasir, P2SAMConfig(pos_range=(1, 5), neg_range=(1, 3), share_prompts=True))
    prior = engine.set_prior(prior_img, prior_mask)
    for target in targets:
        counter = RowCounter(kvasir)
        res = engine.segment(engine.encode(target), prior)
        counter.close()
        distinct = {frozenset(zip(map(tuple, c.points.tolist()), c.labels.tolist())) for c in res.candidates}
        assert counter.rows == 3 * len(distinct)
        for i, c in enumerate(res.candidates):
            assert len({tuple(p) + (lab,) for p, lab in zip(c.points.tolist(), c.labels.tolist())}) == len(c.points)
            if c.shared_with is not None:
                j = c.shared_with
                assert j < i and res.candidates[j].shared_with is None
                assert torch.equal(res.candidate_logits[i], res.candidate_logits[j])


@pytest.mark.parametrize("backbone", ["small", "lite_medsam"])
def test_batch_encoding_equals_per_slice_encoding(backbone):
    torch.manual_seed(0)
    engine = P2SAMEngine(build_sam(backbone))
    rng = np.random.default_rng(1)
    slices = [rng.integers(0, 255, (120, 100), dtype=np.uint8) for _ in range(3)]
    slices[1] = (slices[1] // 4).astype(np.uint8)  # another intensity range: per-image normalisation
    batch = engine.encode_batch(slices)
    for img, enc in zip(slices, batch):
        one = engine.encode(img)
        assert enc.features.shape == one.features.shape and enc.input_size == one.input_size
        assert torch.allclose(enc.features, one.features, atol=1e-4, rtol=1e-4)
    assert 1 <= engine.encode_batch_size(64) <= engine.encode_batch_size(4096) <= 32
    assert engine.encode_batch_size(0) == 1


def test_encoder_autocast_runs_on_cpu_and_keeps_float32_features(planted):
    torch.manual_seed(0)
    engine = P2SAMEngine(build_sam("small"), P2SAMConfig(encoder_dtype="bfloat16"))
    enc = engine.encode(planted[0])
    full = engine.with_config(encoder_dtype="float32").encode(planted[0])
    assert enc.features.dtype == torch.float32
    assert not torch.equal(enc.features, full.features)  # it did run in bfloat16
    cos = torch.nn.functional.cosine_similarity(enc.features.flatten(), full.features.flatten(), dim=0)
    assert cos > 0.99
