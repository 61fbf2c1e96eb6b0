"""A whole job on a real CT series: prior = the IBSI-1 lung CT with the vendor's RTSTRUCT (contours
placed by z), follow-up = a copy warped by bench.volumes' seeded known deformation (rigid shift
and rotation, smooth elastic field, tumour shrinkage), written as a DICOM series in a new study
and Frame of Reference. The job must register it (error against the known rigid part below a
2-3 mm voxel diagonal), segment the expected slices and write a dciodvfy-clean RTSTRUCT on the
follow-up that reads back. Slow (a real registration and ~30 slices through the bundled
model); skipped with a message where ../shared/data is absent."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

import imaging
from bench import volumes
from p2sam.pipeline import run_job
from p2sam.spec import JobSpec, TargetSpec
from tests.conftest import shared_data

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def test_job_on_a_warped_copy_of_the_real_lung_ct(tmp_path):
    folder = shared_data("dicom", "ibsi1-lung-ct")
    prior = imaging.read_image(folder / "ct")
    truth_prior = imaging.read_mask(folder / "RS_GTV.dcm", prior, "GTV-1")
    d = volumes.make_deformation(prior, truth_prior, seed=2024)
    phi, rigid = volumes.deformation_points(d, prior)
    warped, truth = volumes.warp(prior, truth_prior, phi)
    target = imaging.write_dicom_series(warped, tmp_path / "followup", series_description="warped copy",
                                        patient={k: prior.dicom.patient_study.get(k) for k in ("PatientID", "PatientName")},
                                        frame_of_reference_uid=imaging.dicom_common.new_uid("lung-followup-for"),
                                        uid_entropy="lung-followup")
    assert target.dicom.frame_of_reference_uid != prior.dicom.frame_of_reference_uid
    spec = JobSpec(prior_image=str(folder / "ct"), prior_mask=str(folder / "RS_GTV.dcm"), roi="GTV-1",
                   targets=[TargetSpec(path=str(tmp_path / "followup"), name="followup")],
                   outputs=["rtstruct", "nifti"], n_samples=0, sampler="none")
    summary = run_job(spec, tmp_path / "out")
    result = json.loads((tmp_path / "out" / "followup" / "result.json").read_text())
    reg = result["registration"]
    assert reg["method"] == "rigid_registration" and not reg["cross_modality"] and reg["quality_measure"] == "NCC"
    mean_mm, max_mm = volumes.registration_error(reg["transform"], target, truth, rigid)
    assert mean_mm < 2.0 and max_mm < 3.5, (mean_mm, max_mm)
    carried = volumes.carried_by_registration(reg["transform"], prior, truth_prior, target)
    assert volumes.dice(carried, truth) > 0.7
    rs = tmp_path / "out" / "followup" / "rtstruct.dcm"
    predicted = imaging.read_mask(rs, target)
    # the RTSTRUCT is polygons of the NIfTI mask (islands under P2SAM_MIN_ISLAND_MM2 dropped): not voxel-equal
    assert volumes.dice(predicted, imaging.read_mask(tmp_path / "out" / "followup" / "mask.nii.gz", target)) >= 0.99
    expected = {s["z"] for s in result["slices"] if s["expected"]}
    truth_slices = set(np.flatnonzero(truth.any(axis=(1, 2))).tolist())
    assert len(truth_slices - expected) <= 2, (sorted(truth_slices), sorted(expected))  # registration found the slices
    exe = shutil.which("dciodvfy")
    if exe is not None:
        out = subprocess.run([exe, "-new", str(rs)], capture_output=True, text=True, timeout=120)
        assert not [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    dice = volumes.dice(predicted, truth)
    print(f"lung warped copy: model {summary.model['name']}, Dice {dice:.3f} (registration only "
          f"{volumes.dice(carried, truth):.3f}), registration error {mean_mm:.2f} / {max_mm:.2f} mm")
    assert summary.targets[0].found
