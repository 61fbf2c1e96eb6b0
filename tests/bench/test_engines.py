"""The benchmarks run the engine a job runs: built by the product's ModelPool, with the card's part ranges."""

from __future__ import annotations

from bench.common import make_engine
from p2sam.modelpool import ModelPool, part_ranges


def test_bench_engines_come_from_the_model_card_like_jobs():
    pool = ModelPool()
    card = next(m["card"] for m in pool.describe() if m["name"] == "ct_phantom")
    engine, name = make_engine("ct_phantom", threads=1)
    assert name == "ct_phantom"
    assert {"pos_range": engine.config.pos_range, "neg_range": engine.config.neg_range} == part_ranges(card)
    assert part_ranges(card) == {"pos_range": (1, 5), "neg_range": (1, 3)}  # what jobs on ct_phantom run
    assert pool.get("ct_phantom")[1].config == engine.config
    changed, _ = make_engine("ct_phantom", threads=1, pos_range=(1, 3))
    assert changed.config.pos_range == (1, 3) and changed.config.neg_range == (1, 3)
