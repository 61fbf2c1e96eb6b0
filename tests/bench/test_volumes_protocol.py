"""bench.volumes runs its three protocols through run_job on any folder of the sts-ct-mr layout
(here one synthetic phantom patient and a tiny random model: the Dice values mean nothing, the
plumbing, the known deformation and the registration error do)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import volumes
from imaging import write_nifti
from imaging.phantom import make_case
from models import save_weights
from tests.finetune.helpers import TINY_SMALL, tiny_small


@pytest.fixture(scope="module")
def fake_sts(tmp_path_factory):
    root = tmp_path_factory.mktemp("sts")
    case = make_case(seed=3, n_visits=1, shape=(16, 96, 96))
    ct, gtv = case.images[0], case.gtv[0]
    hu = ct.array
    mr = ct.with_array(np.select([hu < -500, hu < -50, hu < 300], [20.0, 900.0, 400.0 + hu], default=60.0).astype(np.float32),
                       modality="MR")
    folder = root / "STS_007"
    folder.mkdir()
    write_nifti(ct.array, ct, folder / "CT_image.nii.gz")
    write_nifti(gtv, ct, folder / "CT_mask.nii.gz")
    write_nifti(mr.array, mr, folder / "MR_T1_image.nii.gz")
    write_nifti(gtv, mr, folder / "MR_T1_mask.nii.gz")
    (root / "notes").mkdir()  # not a patient
    weights = root / "tiny.pt"
    save_weights(tiny_small(), weights, "small", TINY_SMALL, {"name": "tiny", "engine": {"pos_range": [1, 2]}})
    return root, weights, gtv


def test_known_deformation_is_what_it_says(fake_sts):
    root, _, _ = fake_sts
    p = volumes.load_patient(root / "STS_007", None)
    d = volumes.make_deformation(p.ct, p.ct_mask, seed=5)
    assert 5 <= np.linalg.norm(d.shift_mm) <= 15 and max(abs(a) for a in d.angles_deg) <= 3
    assert 2 <= d.elastic_mm <= 4 and 0 <= d.shrink <= 0.15
    assert d == volumes.make_deformation(p.ct, p.ct_mask, seed=5)  # seeded
    phi, rigid = volumes.deformation_points(d, p.ct)
    assert np.linalg.norm(phi - rigid, axis=-1).max() <= d.elastic_mm + d.shrink * 3 * d.sigma_mm
    _, truth = volumes.warp(p.ct, p.ct_mask, phi)
    assert truth.any() and volumes.dice(truth, p.ct_mask) < 0.9  # it moved
    exact = {"kind": "Euler3DTransform", "parameters": list(np.radians(d.angles_deg)) + list(d.shift_mm),
             "fixed_parameters": list(d.centre) + [0.0]}
    assert volumes.registration_error(exact, p.ct, truth, rigid) == pytest.approx((0.0, 0.0), abs=1e-6)


@pytest.mark.slow
def test_bench_runs_every_protocol_through_run_job(fake_sts, tmp_path, capsys):
    root, weights, gtv = fake_sts
    out = tmp_path / "volumes.json"
    code = volumes.main(["--data", str(root), "--backbones", str(weights), "--methods", "direct,p2sam,box,location",
                         "--max-slices", "3", "--json", str(out), "--work", str(tmp_path / "work")])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("volumes_dice ") and "protocol 2" in "\n".join(lines)
    report = json.loads(out.read_text())
    assert not report["partial"] and set(report["means"]) == {"within", "followup", "mr_ct"}
    model = str(weights)
    for proto in ("within", "followup", "mr_ct"):
        assert set(report["means"][proto]["methods"][model]) >= {"direct", "p2sam", "box", "location"}
    patient = report["patients"]["STS_007"]
    assert patient["within"]["methods"][model]["p2sam"]["n_slices"] == 2  # 3 kept tumour slices minus the prior
    follow = patient["followup"]
    assert follow["registration"]["method"] == "rigid_registration"
    assert follow["error_rigid_mm"]["mean"] < 2.5, follow  # the phantom's 2.5 mm pixels
    assert follow["registration_only"] > follow["identity"]
    assert patient["mr_ct"]["registration"]["cross_modality"]
    # the job's own files: an RTSTRUCT for the DICOM follow-up, result.json with the transform
    job_dir = tmp_path / "work" / "STS_007" / "followup" / "out" / "tiny" / "p2sam" / "followup"
    result = json.loads((job_dir / "result.json").read_text())
    assert (job_dir / "rtstruct.dcm").is_file() and result["registration"]["transform"]["kind"] == "Euler3DTransform"
    # "location" is the same job with the engine's location setting on: its slices chose by the location rule
    located = json.loads((job_dir.parent.parent / "location" / "followup" / "result.json").read_text())
    assert {s["selection"] for s in located["slices"]} >= {"location"}
    assert {s["selection"] for s in result["slices"]} == {"retrieval"}


def test_rigid_registration_of_a_real_sarcoma_ct_follow_up_is_within_two_mm():
    """Protocol 2's warped follow-up of a real CT (STS_043, seed as bench.volumes): the registration
    error against the known rigid part stays under 2 mm. Before the registration rotated about the
    follow-up's centre and clipped CT to soft-tissue HU, it stopped 8.4 / 9.2 mm (mean / max) off in
    one run (8.9 / 9.8 in another: its sampling was not seeded either)."""
    from imaging import register_rigid
    from imaging.registration import transform_dict
    from tests.conftest import shared_data

    p = volumes.load_patient(shared_data("sts-ct-mr", "STS_043"), None)
    _, _, rigid, fu, truth = volumes.simulated_followup(p, volumes.patient_seed(p.name))
    reg = register_rigid(p.ct, fu, threads=2)
    assert reg.method == "rigid_registration", reg.reason
    mean, worst = volumes.registration_error(transform_dict(reg.transform), fu, truth, rigid)
    assert mean < 2.0 and worst < 2.0, (mean, worst)
    assert volumes.dice(reg.map_mask(p.ct_mask), truth) > 0.9
