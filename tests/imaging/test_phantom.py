"""The synthetic phantom: seeded, anatomically plausible HU, a lesion that moves/shrinks,
patient shifts between visits, a small example case on disk, cheap 2-D training slices."""
import json

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from imaging import list_rois, list_series, read_image, read_mask, read_nifti_array
from imaging.phantom import iter_training_slices, make_case, write_example_case


def test_same_seed_same_case_other_seed_other_case():
    a, b, c = make_case(3, n_visits=2), make_case(3, n_visits=2), make_case(4, n_visits=2)
    assert np.array_equal(a.images[1].array, b.images[1].array) and np.array_equal(a.gtv[0], b.gtv[0])
    assert not np.array_equal(a.gtv[0], c.gtv[0])


def test_case_content():
    case = make_case(0, n_visits=3, shape=(16, 96, 96), spacing=(3.0, 3.0, 3.0))
    ct = case.images[0]
    assert ct.shape == (16, 96, 96) and ct.array.dtype == np.float32 and ct.modality == "CT"
    assert np.median(ct.array[:, :6, :6]) < -900                          # air around the body
    assert ct.array.max() > 600                                           # bone
    assert (ct.array < -700).mean() > 0.3                                 # air + lungs
    volumes = [m.sum() for m in case.gtv]
    assert all(v > 0 for v in volumes) and volumes[2] < volumes[0]        # the lesion shrinks
    assert all(np.flatnonzero(m.any(axis=(1, 2))).size >= 3 for m in case.gtv)
    core = np.stack([ndimage.binary_erosion(m) for m in case.gtv[0]])     # away from partial-volume edges
    assert 20 < np.median(ct.array[core]) < 70                            # lesion ~30-60 HU
    assert case.poses[0] != case.poses[1]                                 # the patient moved


def test_example_case_on_disk(tmp_path):
    paths = write_example_case(tmp_path / "ex", seed=0)
    size = sum(f.stat().st_size for f in (tmp_path / "ex").rglob("*") if f.is_file())
    assert size < 5e6
    prior = read_image(paths["prior"])
    assert list_rois(paths["prior_rtstruct"]) == ["GTV"]
    gt = read_nifti_array(paths["prior_gtv"], prior).astype(bool)
    assert np.array_equal(read_mask(paths["prior_rtstruct"], prior, "GTV"), gt)
    rs = pydicom.dcmread(paths["prior_rtstruct"])
    series = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == prior.dicom.series_instance_uid
    followups = [read_image(paths[n]) for n in ("followup1", "followup2")]
    uids = {v.dicom.series_instance_uid for v in [prior] + followups}
    studies = {v.dicom.study_instance_uid for v in [prior] + followups}
    fors = {v.dicom.frame_of_reference_uid for v in [prior] + followups}
    assert len(uids) == len(studies) == len(fors) == 3                    # a new study + FoR per visit
    assert {v.dicom.patient_study["PatientID"] for v in [prior] + followups} == {"PHANTOM-0000"}
    for v, name in zip(followups, ("followup1_gtv", "followup2_gtv")):
        assert read_nifti_array(paths[name], v).any()
    assert len(list_series(tmp_path / "ex")) == 3
    meta = json.loads((tmp_path / "ex" / "case.json").read_text())
    assert meta["seed"] == 0 and len(meta["gtv_slices"]) == 3
    again = write_example_case(tmp_path / "ex2", seed=0)                   # deterministic UIDs
    assert read_image(again["prior"]).dicom.series_instance_uid == prior.dicom.series_instance_uid


def test_example_case_outputs_validate(tmp_path, dciodvfy):
    paths = write_example_case(tmp_path / "ex", seed=1)
    dciodvfy(paths["prior_rtstruct"])
    dciodvfy(sorted((tmp_path / "ex" / "prior").iterdir())[0])


def test_training_slices_are_cheap_and_varied():
    pairs = list(iter_training_slices(8, seed=5, size=64, slices_per_case=2))
    assert len(pairs) >= 12
    for image, mask in pairs:
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and mask.shape == (64, 64) and mask.any()
    areas = [m.sum() for _, m in pairs]
    assert max(areas) > 2 * min(areas)
    bodies = [(img[..., 0] > 60).sum() for img, _ in pairs]
    assert len(set(bodies)) > 4
    again = list(iter_training_slices(2, seed=5, size=64, slices_per_case=2))
    assert np.array_equal(again[0][0], pairs[0][0])


@pytest.mark.parametrize("seed", range(6))
def test_lesion_is_visible_in_the_default_window(seed):
    case = make_case(seed, n_visits=1)
    ct, gtv = case.images[0], case.gtv[0]
    ring = np.zeros_like(gtv)
    for k in np.flatnonzero(gtv.any(axis=(1, 2))):
        ring[k] = ndimage.binary_dilation(gtv[k], iterations=3) & ~ndimage.binary_dilation(gtv[k])
    contrast = abs(ct.array[gtv].mean() - ct.array[ring].mean())
    assert contrast > 60, f"seed {seed}: lesion contrast {contrast:.0f} HU ({case.lesion_site})"


def test_training_slices_by_count():
    pairs = list(iter_training_slices(count=5, seed=1, size=48))
    assert len(pairs) == 5
    assert np.array_equal(pairs[0][1], next(iter_training_slices(1, seed=1, size=48))[1])
