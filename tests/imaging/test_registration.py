"""Prior -> follow-up registration on the phantom (known patient poses), and the
position-matching fallback for single slices."""
import numpy as np
import pytest

from imaging import Volume, register_rigid
from imaging.phantom import make_case


def _rot(deg):
    t = np.radians(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


def expected_prior_point(case, followup, world):
    """Ground truth: follow-up scanner point -> patient point -> prior scanner point (LPS)."""
    p0, pf = case.poses[0], case.poses[followup]
    patient = (world - np.array(pf["translation_mm"])) @ _rot(pf["rotation_deg"])
    return patient @ _rot(p0["rotation_deg"]).T + np.array(p0["translation_mm"])


@pytest.fixture(scope="module")
def case():
    return make_case(seed=0)


@pytest.mark.parametrize("followup", [1, 2])
def test_rigid_registration_recovers_patient_shift(case, followup):
    reg = register_rigid(case.images[0], case.images[followup], threads=2)
    assert reg.method == "rigid_registration"
    assert reg.quality.label == "good" and reg.quality.ncc_after > reg.quality.ncc_before
    fu = case.images[followup]
    world = fu.index_to_world(np.argwhere(fu.array > -500)[::97])          # points in the body
    got = np.array([reg.transform.TransformPoint(tuple(w)) for w in world])
    error = np.linalg.norm(got - expected_prior_point(case, followup, world), axis=1)
    assert error.max() < 2.5, f"registration error up to {error.max():.2f} mm"   # < one 2.5 mm pixel
    # slice correspondence: the prior slice through which each follow-up slice centre maps
    nz, ny, nx = fu.shape
    centres = fu.index_to_world(np.array([[k, (ny - 1) / 2, (nx - 1) / 2] for k in range(nz)]))
    truth = np.clip(np.rint(case.images[0].world_to_index(expected_prior_point(case, followup, centres))[:, 0]),
                    0, nz - 1)
    assert np.abs(np.array(reg.slice_correspondence()) - truth).max() <= 1
    summary = reg.summary()
    assert summary["method"] == "rigid_registration" and summary["ncc_after"] > 0.9


def test_mapped_mask_predicts_followup_slices(case):
    reg = register_rigid(case.images[0], case.images[1], threads=2)
    targets = set(reg.target_slices(case.gtv[0]))
    truth = set(np.flatnonzero(case.gtv[1].any(axis=(1, 2))).tolist())
    assert len(truth - targets) <= 1                        # the lesion shrank and moved: nearly covered
    refs = reg.slice_correspondence(case.gtv[0])
    prior_slices = set(np.flatnonzero(case.gtv[0].any(axis=(1, 2))).tolist())
    assert set(refs) <= prior_slices                        # always a prior slice that shows the lesion
    assert refs == sorted(refs)                             # monotonic along the body axis


def test_single_prior_slice_falls_back_to_position_matching(case):
    prior = case.images[0]
    k = int(np.flatnonzero(case.gtv[0].any(axis=(1, 2)))[3])
    one = Volume(prior.array[k:k + 1], origin=prior.index_to_world([k, 0, 0]), spacing=prior.spacing,
                 direction=prior.direction, modality="CT")
    reg = register_rigid(one, case.images[1])
    assert reg.method == "position_matching" and "fewer than" in reg.reason
    assert reg.slice_correspondence() == [0] * case.images[1].shape[0]
    mapped = reg.map_mask(case.gtv[0][k:k + 1])
    # the slice's slab (3 mm thick) lands on the follow-up slice(s) at the same position only
    assert set(np.flatnonzero(mapped.any(axis=(1, 2)))) <= {k - 1, k, k + 1}


def test_2d_pictures_use_position_matching():
    a = Volume(np.random.default_rng(0).integers(0, 255, (1, 32, 40, 3), dtype=np.uint8))
    b = Volume(np.random.default_rng(1).integers(0, 255, (1, 32, 40, 3), dtype=np.uint8))
    reg = register_rigid(a, b)
    mask = np.zeros((1, 32, 40), bool)
    mask[0, 5:9, 7:20] = True
    assert reg.method == "position_matching" and reg.slice_correspondence() == [0]
    assert np.array_equal(reg.map_mask(mask), mask)


def _mr_like(ct: Volume) -> Volume:
    """An 'MR' of a CT: the same anatomy with a non-monotonic tissue contrast (fat bright, soft
    tissue mid-grey, bone and air dark), so intensity correlation says nothing."""
    hu = ct.array
    mr = np.select([hu < -500, hu < -50, hu < 300], [20.0, 900.0, 400.0 + hu], default=60.0).astype(np.float32)
    return ct.with_array(mr, modality="MR")


@pytest.mark.xfail(reason="MR->CT rigid MI registration error measured 3.8 / 4.6 mm (mean / max) here with the seeded sampling (unseeded runs before: 3.1-4.5 / 3.4-5.2 mm), above the test's 3 / 4 mm goal (issue 12)", strict=False)
def test_cross_modality_registration_uses_mutual_information(case):
    prior = _mr_like(case.images[0])
    fu = case.images[1]
    reg = register_rigid(prior, fu, threads=2)
    summary = reg.summary()
    assert reg.method == "rigid_registration", reg.reason
    assert summary["cross_modality"] and summary["modalities"] == ["MR", "CT"] and "MR -> CT" in reg.reason
    assert summary["quality_measure"] == "NMI" and summary["nmi_after"] > summary["nmi_before"]
    assert summary["quality"] in ("good", "fair") and summary["transform"]["kind"] == "Euler3DTransform"
    world = fu.index_to_world(np.argwhere(fu.array > -500)[::97])
    got = np.array([reg.transform.TransformPoint(tuple(w)) for w in world])
    error = np.linalg.norm(got - expected_prior_point(case, 1, world), axis=1)
    # within one voxel (2.5 x 2.5 x 3 mm, diagonal 4.6 mm); CT -> CT does better (< 2.5 mm, above)
    assert error.mean() < 3.0 and error.max() < 4.0, f"cross-modality registration error {error.mean():.2f} / {error.max():.2f} mm"
    # the same pair as CT -> CT keeps the intensity-correlation measure
    assert register_rigid(case.images[0], fu, threads=2).summary()["quality_measure"] == "NCC"


def test_transform_in_the_summary_rebuilds_the_registration(case):
    from imaging.registration import transform_from_dict

    reg = register_rigid(case.images[0], case.images[2], threads=2)
    rebuilt = transform_from_dict(reg.summary()["transform"])
    p = tuple(float(v) for v in case.images[2].index_to_world(np.array([3, 20, 30])))
    assert np.allclose(rebuilt.TransformPoint(p), reg.transform.TransformPoint(p), atol=1e-9)


def test_registration_is_repeatable(case):
    """The same pair registers to the same transform every time, to float precision whatever the thread count (the
    metric's random sampling is seeded: SimpleITK reads seed 0 as 'from the wall clock', which made
    two runs of one job differ by up to ~1 mm and, near a slice boundary, by a slice)."""
    runs = [register_rigid(case.images[0], case.images[2], threads=t).transform.GetParameters() for t in (1, 1, 2)]
    assert np.allclose(runs[0], runs[1], rtol=0, atol=1e-6) and np.allclose(runs[0], runs[2], rtol=0, atol=1e-6)
