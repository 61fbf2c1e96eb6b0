"""Multi-ROI jobs (issue 18) on the synthetic CT case: a two-ROI structure set (GTV + BODY, with
their own numbers, colours and interpreted types) -> one RTSTRUCT, one two-segment SEG, a label
map and per-structure masks; the shared encoding gives each structure exactly what a one-ROI job
gives it, with one encoder pass per follow-up slice."""

from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pydicom
import pytest

import imaging
from imaging.seg import read_seg_segment
from p2sam.followup import segment_followup, segment_structures
from p2sam.modelpool import ModelPool
from p2sam.pipeline import dice, run_job
from p2sam.spec import JobSpec, TargetSpec
from p2sam.structures import label_map, read_structures


@pytest.fixture(scope="module")
def two_roi_case(example_case, tmp_path_factory) -> dict:
    """The example prior with a structure set of two ROIs: GTV (number 3, red, GTV) and BODY
    (number 7, green, EXTERNAL; every voxel above -300 HU), BODY written first."""
    prior = imaging.read_image(example_case["prior"])
    gtv = imaging.read_mask(example_case["prior_rtstruct"], prior, "GTV")
    body = prior.array > -300
    assert body.sum() > 3 * gtv.sum() and (gtv & body).sum() > 0.9 * gtv.sum()  # overlapping, as in a plan
    rs = tmp_path_factory.mktemp("rs") / "two_rois.dcm"
    imaging.write_rtstruct_rois([imaging.RoiSpec(body, "BODY", (0, 255, 0), "EXTERNAL", number=7),
                                 imaging.RoiSpec(gtv, "GTV", (255, 0, 0), "GTV", number=3)],
                                prior, rs, min_island_area_mm2=0, algorithm_name="test", generation_algorithm="MANUAL")
    return {**example_case, "rs": str(rs), "gtv": gtv, "body": body}


def _spec(case: dict, **kw) -> JobSpec:
    return JobSpec(prior_image=case["prior"], prior_mask=case["rs"],
                   targets=[TargetSpec(path=case["followup1"], name="visit1")], model="ct_phantom", n_samples=2, **kw)


@pytest.fixture(scope="module")
def job(two_roi_case, settings, pool, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return out, run_job(_spec(two_roi_case, rois="all"), out, pool=pool, settings=settings)


def test_structures_keep_the_prior_sets_names_numbers_colours_and_types(two_roi_case):
    prior = imaging.read_image(two_roi_case["prior"])
    structures, warnings = read_structures(two_roi_case["rs"], prior, "all")
    assert [(s.name, s.number, s.color, s.interpreted_type) for s in structures] == [
        ("BODY", 7, (0, 255, 0), "EXTERNAL"), ("GTV", 3, (255, 0, 0), "GTV")]
    assert np.array_equal(structures[1].mask, two_roi_case["gtv"]) and not warnings
    named, _ = read_structures(two_roi_case["rs"], prior, ["gtv", "BODY"])  # any order, names ignoring case
    assert [s.name for s in named] == ["BODY", "GTV"]


def test_unknown_names_are_one_error_listing_what_the_set_holds(two_roi_case):
    prior = imaging.read_image(two_roi_case["prior"])
    with pytest.raises(imaging.RoiNotFoundError) as err:
        read_structures(two_roi_case["rs"], prior, ["GTV", "Heart", "Lungs"])
    assert "'Heart', 'Lungs'" in str(err.value) and "holds: 'BODY', 'GTV'" in str(err.value)


def test_shared_encoding_gives_each_structure_its_one_roi_result(two_roi_case, settings, pool):
    """Same masks, probabilities and prompts as one segment_followup per structure, with one
    encoder pass per follow-up slice for both structures and one per prior slice, even when the
    pool's prior cache holds fewer priors than the job needs (counted; the engine is the real one)."""
    prior = imaging.read_image(two_roi_case["prior"])
    target = imaging.read_image(two_roi_case["followup1"])
    model = pool.resolve("ct_phantom", False)
    _, engine = pool.get(model)
    masks = [two_roi_case["body"], two_roi_case["gtv"]]
    single = [segment_followup(prior, m, target, engine, ModelPool(settings), model) for m in masks]

    encoded = []
    real = engine.encode_batch

    def counting(images):
        encoded.append(len(images))
        return real(images)

    engine.encode_batch = counting
    try:
        tiny = ModelPool(settings.model_copy(update={"prior_cache_size": 1}))  # fewer cache places than priors
        both = segment_structures(prior, masks, target, engine, tiny, model)
    finally:
        del engine.encode_batch
    union = {r.z for res in both for r in res.slices}
    prior_slices = {r.prior_z for res in both for r in res.slices}
    assert sum(encoded) == len(union) + len(prior_slices)  # each follow-up and prior slice encoded once
    for one, shared in zip(single, both):
        assert [s.z for s in one.slices] == [s.z for s in shared.slices]
        assert np.array_equal(one.mask, shared.mask)
        assert np.allclose(one.probability, shared.probability)
        assert [s.segmentation.best.n_pos if s.segmentation.best else None for s in one.slices] == \
               [s.segmentation.best.n_pos if s.segmentation.best else None for s in shared.slices]
    assert len({s.z for s in single[0].slices} & {s.z for s in single[1].slices}) > 0  # slices really were shared


def test_one_rtstruct_with_every_roi_as_in_the_prior(job, two_roi_case):
    out, summary = job
    target = imaging.read_image(two_roi_case["followup1"])
    ds = pydicom.dcmread(out / "visit1" / "rtstruct.dcm")
    assert [(int(r.ROINumber), r.ROIName) for r in ds.StructureSetROISequence] == [(7, "BODY"), (3, "GTV")]
    assert [list(map(int, rc.ROIDisplayColor)) for rc in ds.ROIContourSequence] == [[0, 255, 0], [255, 0, 0]]
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["EXTERNAL", "GTV"]
    assert ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == target.dicom.frame_of_reference_uid
    result = json.loads((out / "visit1" / "result.json").read_text())
    for st in result["structures"]:
        ours = imaging.read_mask(out / "visit1" / st["files"]["mask"], target)
        back = imaging.read_mask(out / "visit1" / "rtstruct.dcm", target, st["name"])
        assert ours.any() and np.array_equal(ours, back), st["name"]
    assert summary.prior["rois"] == ["BODY", "GTV"]


def test_one_seg_with_a_segment_per_structure_and_a_label_map(job, two_roi_case):
    out, _ = job
    target = imaging.read_image(two_roi_case["followup1"])
    result = json.loads((out / "visit1" / "result.json").read_text())
    masks = [imaging.read_mask(out / "visit1" / st["files"]["mask"], target) for st in result["structures"]]
    seg = hd.seg.segread(out / "visit1" / "seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["BODY", "GTV"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Entire body"
    for number, mask in enumerate(masks, start=1):
        back = imaging.read_mask(out / "visit1" / "seg.dcm", target, number)
        assert np.array_equal(back, mask)
        probability = read_seg_segment(out / "visit1" / "probability_seg.dcm", target, number, probability=True).mask
        ours = imaging.read_nifti_array(out / "visit1" / result["structures"][number - 1]["files"]["probability"], target)
        assert np.abs(probability - ours).max() <= 1 / 255 + 1e-6
    labels = imaging.read_nifti_array(out / "visit1" / "labels.nii.gz", target)
    assert np.array_equal(labels, label_map(masks))
    assert ((labels == 2) == masks[1]).all()  # the small GTV is on top of the BODY that holds it


def test_result_json_and_job_summary_per_structure(job):
    out, summary = job
    result = json.loads((out / "visit1" / "result.json").read_text())
    assert [(s["name"], s["label"], s["number"]) for s in result["structures"]] == [("BODY", 1, 7), ("GTV", 2, 3)]
    for st in result["structures"]:
        assert {"volume_ml", "flagged_slices", "review", "mean_sample_dice"} <= set(st["qc"])
        assert {"mask", "probability", "samples", "preview", "review_sheet"} <= set(st["files"])
        for file in st["files"].values():
            assert (out / "visit1" / file).is_file()
        assert st["slices"] and st["timings_s"]["decode"] > 0
    assert result["qc"]["review"] == any(s["qc"]["review"] for s in result["structures"])
    brief = summary.targets[0].summary()
    assert [s.name for s in brief.structures] == ["BODY", "GTV"]
    assert all(s.volume_ml > 0 for s in brief.structures)


def test_named_subset_and_rerun_is_skipped(two_roi_case, settings, pool, tmp_path):
    summary = run_job(_spec(two_roi_case, rois=["GTV"], outputs=["rtstruct", "nifti"]), tmp_path, pool=pool, settings=settings)
    ds = pydicom.dcmread(tmp_path / "visit1" / "rtstruct.dcm")
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["GTV"]
    target = imaging.read_image(two_roi_case["followup1"])
    truth = imaging.read_mask(two_roi_case["followup1_gtv"], target)
    gtv = imaging.read_mask(tmp_path / "visit1" / "GTV_mask.nii.gz", target)
    print(f"GTV Dice on the phantom follow-up (bundled ct_phantom model): {dice(gtv, truth):.3f}")
    again = run_job(_spec(two_roi_case, rois=["GTV"], outputs=["rtstruct", "nifti"]), tmp_path, pool=pool, settings=settings)
    assert again.targets[0].files == summary.targets[0].files


def test_roi_and_rois_together_are_refused():
    with pytest.raises(ValueError, match="either roi"):
        JobSpec(prior_image="p", prior_mask="m", roi="GTV", rois=["GTV"], targets=[TargetSpec(path="t")])
    with pytest.raises(ValueError, match="named twice"):
        JobSpec(prior_image="p", prior_mask="m", rois=["GTV", "gtv"], targets=[TargetSpec(path="t")])


def test_batch_manifests_take_rois(tmp_path):
    from p2sam.batch import load_manifest

    csv_path = tmp_path / "m.csv"
    csv_path.write_text("patient,role,image,mask,roi,rois,truth,name\n"
                        "p1,prior,ct/,rs.dcm,,GTV-1; SpinalCord,,\np1,visit,fu/,,,,,v1\n"
                        "p2,prior,ct/,rs.dcm,,all,,\np2,visit,fu/,,,,,v1\n"
                        "p3,prior,ct/,rs.dcm,GTV,,,\np3,visit,fu/,,,,,v1\n")
    manifest = load_manifest(csv_path)
    assert [(p.prior.roi, p.prior.rois) for p in manifest.patients] == [
        (None, ["GTV-1", "SpinalCord"]), (None, "all"), ("GTV", None)]
    json_path = tmp_path / "m.json"
    json_path.write_text(json.dumps({"patients": [{"id": "p1", "prior": {"image": "ct", "mask": "rs.dcm", "rois": "all"},
                                                   "visits": [{"image": "fu"}]}]}))
    assert load_manifest(json_path).patients[0].prior.rois == "all"
    json_path.write_text(json.dumps({"patients": [{"id": "p1", "prior": {"image": "ct", "mask": "rs.dcm", "rois": ["A", "a"]},
                                                   "visits": [{"image": "fu"}]}]}))
    with pytest.raises(ValueError, match="named twice"):
        load_manifest(json_path)
