"""QC flags: thresholds from the model card (calibrated by bench.uncertainty), defaults otherwise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imaging import Volume
from models import Segmentation
from models.engine import Candidate
from p2sam.followup import FollowupResult, SliceResult
from p2sam.qc import MIN_SAMPLE_DICE, QcThresholds, target_qc, thresholds_from_card


def _result(distances: list[float], sample_dice: list[float | None], found: list[bool]) -> tuple[FollowupResult, Volume]:
    n = len(distances)
    mask = np.zeros((n, 8, 8), bool)
    slices = []
    for z, (d, sd, f) in enumerate(zip(distances, sample_dice, found)):
        mask[z, 2:5, 2:5] = f
        cand = Candidate(n_pos=1, n_neg=1, points=np.zeros((2, 2)), labels=np.array([1, 0]), distance=d)
        seg = Segmentation(method="p2sam", mask=mask[z], logits=np.zeros((8, 8), np.float32), found=f, chosen=0 if f else None,
                           candidates=[cand], candidate_logits=torch.zeros(1, 1, 4, 4), timings={})
        slices.append(SliceResult(z=z, prior_z=z, expected=True, segmentation=seg, sample_dice=sd))
    res = FollowupResult(mask=mask, probability=mask.astype(np.float32), samples=None, slices=slices, registration={"quality": "good"})
    return res, Volume(np.zeros((n, 8, 8), np.int16), spacing=np.array([1.0, 1.0, 2.0]))


def test_card_thresholds_flag_weak_matches_and_disagreeing_samples():
    th = thresholds_from_card({"qc": {"min_sample_dice": 0.7, "max_distance": 2.0, "source": "bench.uncertainty"}})
    assert th == QcThresholds(0.7, 2.0, "bench.uncertainty")
    res, vol = _result([1.0, 3.0, 1.0, math.inf], [0.9, 0.9, 0.6, None], [True, True, True, False])
    qc = target_qc(res, vol, th)
    flagged = {f["z"]: " ".join(f["reasons"]) for f in qc["flagged_slices"]}
    assert set(flagged) == {1, 2, 3} and qc["review"]
    assert "Wasserstein distance 3 > 2" in flagged[1] and "samples disagree" in flagged[2] and "not found" in flagged[3]
    assert qc["thresholds"]["source"] == "bench.uncertainty"


def test_the_sample_threshold_applies_only_to_the_sampler_it_was_calibrated_for():
    card = {"qc": {"sampler": "prompt_noise", "min_sample_dice": 0.7, "max_distance": 2.0, "source": "calibrated"}}
    assert thresholds_from_card(card, "prompt_noise") == QcThresholds(0.7, 2.0, "calibrated")
    other = thresholds_from_card(card, "retrieval")
    assert other.min_sample_dice == MIN_SAMPLE_DICE and other.max_distance == 2.0 and "retrieval" in other.source


def test_without_a_calibrated_card_only_the_defaults_apply():
    assert thresholds_from_card({}) == thresholds_from_card(None) == QcThresholds(MIN_SAMPLE_DICE, None, "default")
    res, vol = _result([1.0, 1e9], [0.95, 0.95], [True, True])
    qc = target_qc(res, vol, thresholds_from_card({"name": "x"}))
    assert qc["flagged_slices"] == [] and not qc["review"]
    assert qc["volume_ml"] == pytest.approx(2 * 9 * 2 / 1000)


def test_sampler_takes_the_cards_calibrated_knobs_for_its_kind():
    from p2sam.modelpool import sampler_config

    card = {"qc": {"sampler": "prompt_noise", "scale": 0.15, "df": 3.0, "min_sample_dice": 0.8}}
    assert sampler_config(card, "prompt_noise", 16).scale == 0.15
    assert sampler_config(card, "retrieval", 16).tau == sampler_config({}, "retrieval", 16).tau  # not calibrated for it
    assert sampler_config(card, "prompt_noise", 0).kind == "none"


def test_batch_scores_an_empty_prediction_instead_of_failing_the_visit(tmp_path):
    import json

    from PIL import Image

    from p2sam.batch import VisitEntry, VisitReport, _fill

    img, truth, out = tmp_path / "7.png", tmp_path / "7_mask.png", tmp_path / "out"
    out.mkdir()
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(img)
    t = np.zeros((6, 8), np.uint8)
    t[1:3, 1:3] = 255
    Image.fromarray(t).save(truth)
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(out / "mask.png")  # "not found": an empty mask
    (out / "result.json").write_text(json.dumps({"target": "7", "found": False, "qc": {"volume_ml": 0.0, "flagged_slices": []}}))
    report = VisitReport(patient="p", visit="7")
    _fill(report, out, VisitEntry(image=str(img), truth=str(truth), name="7"))
    assert report.dice == 0.0 and report.area_px == 0 and report.found is False
