"""End to end through real processes: upload the example's prior (DICOM CT + RTSTRUCT) and a
follow-up series, submit, poll to success, download the RTSTRUCT and check it with pydicom
against the follow-up series and against the engine run in-process on the same files."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pydicom
import pytest

import imaging
from p2sam.modelpool import ModelPool
from p2sam.pipeline import dice, run_job
from p2sam.settings import Settings
from p2sam.spec import JobSpec, TargetSpec

from .client import client, record, upload_files, upload_zip, wait

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def finished(stack, case):
    """The example submitted through the API with every output; returns (job, results, client)."""
    from .conftest import ensure_worker

    ensure_worker(stack)
    c = client(stack.url, stack.keys["planning"], bearer=True)  # Authorization: Bearer this time
    prior = upload_zip(c, case["prior"], case["prior_rtstruct"])
    assert [s["n_slices"] for s in prior["series"]] == [8] and prior["masks"][0]["rois"] == ["GTV"]
    followup = upload_files(c, case["followup1"])
    r = c.post("/v1/jobs", json={"prior": {"upload_id": prior["id"], "roi": "GTV"},
                                 "targets": [{"upload_id": followup["id"], "name": "followup1"}],
                                 "model": "testmodel", "n_samples": 2})
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == f"/v1/jobs/{r.json()['id']}"
    job = wait(c, r.json()["id"], timeout=300)
    assert job["state"] == "succeeded", job
    results = c.get(f"/v1/jobs/{job['id']}/results")
    assert results.status_code == 200, results.text
    yield job, results.json(), c
    c.close()


def test_job_reports_model_progress_and_results(finished, model_dir):
    job, results, _ = finished
    assert job["progress"] == 1.0 and job["stage"] == "done"
    expected = hashlib.sha256((model_dir / "testmodel.pt").read_bytes()).hexdigest()
    assert job["model"] == {"requested": "testmodel", "name": "testmodel", "sha256": expected, "backbone": "small"}
    (target,) = results["targets"]
    assert target["target"] == "followup1" and target["found"] is True and target["volume_ml"] > 0
    names = {a["name"] for a in target["artifacts"]}
    assert {"rtstruct.dcm", "seg.dcm", "probability_seg.dcm", "mask.nii.gz", "probability.nii.gz",
            "samples.nii.gz", "preview.png", "result.json"} <= names


def test_artifacts_have_sha256_etags(finished):
    job, results, c = finished
    art = next(a for a in results["targets"][0]["artifacts"] if a["name"] == "rtstruct.dcm")
    r = c.get(art["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    assert hashlib.sha256(r.content).hexdigest() == art["sha256"] and len(r.content) == art["size"]
    assert r.headers["etag"] == f'"{art["sha256"]}"'
    again = c.get(art["url"], headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304


def _download(c, results, name) -> bytes:
    art = next(a for a in results["targets"][0]["artifacts"] if a["name"] == name)
    r = c.get(art["url"])
    assert r.status_code == 200
    return r.content


def test_rtstruct_references_the_followup_series(finished, case):
    _, results, c = finished
    rt = pydicom.dcmread(io.BytesIO(_download(c, results, "rtstruct.dcm")))
    slices = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(Path(case["followup1"]).iterdir())]
    sops = {str(s.SOPInstanceUID) for s in slices}
    frame = str(slices[0].FrameOfReferenceUID)
    assert rt.Modality == "RTSTRUCT"
    assert str(rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID) == frame
    assert str(rt.StructureSetROISequence[0].ReferencedFrameOfReferenceUID) == frame
    study = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert str(study.RTReferencedSeriesSequence[0].SeriesInstanceUID) == str(slices[0].SeriesInstanceUID)
    referenced = {str(img.ReferencedSOPInstanceUID) for roi in rt.ROIContourSequence
                  for contour in roi.ContourSequence for img in contour.ContourImageSequence}
    assert referenced and referenced <= sops


def test_mask_matches_the_engine_in_process(finished, case, model_dir, tmp_path):
    """Dice >= 0.9 between the service's RTSTRUCT and the same job run in this process."""
    _, results, c = finished
    rt_path = tmp_path / "service_rtstruct.dcm"
    rt_path.write_bytes(_download(c, results, "rtstruct.dcm"))
    settings = Settings(data_dir=tmp_path / "data", models_dir=model_dir, threads=1, min_island_mm2=0)
    spec = JobSpec(prior_image=case["prior"], prior_mask=case["prior_rtstruct"], roi="GTV",
                   targets=[TargetSpec(path=case["followup1"], name="followup1")], model="testmodel", n_samples=2,
                   outputs=["rtstruct", "nifti"])
    run_job(spec, tmp_path / "out", pool=ModelPool(settings), settings=settings)
    followup = imaging.read_image(case["followup1"])
    service_mask = imaging.read_mask(rt_path, followup, "GTV")
    local_mask = imaging.read_mask(tmp_path / "out" / "followup1" / "rtstruct.dcm", followup, "GTV")
    assert service_mask.any()
    assert dice(service_mask, local_mask) >= 0.9
    service_nifti = imaging.read_mask(_save(tmp_path / "svc.nii.gz", _download(c, results, "mask.nii.gz")), followup)
    local_nifti = imaging.read_mask(tmp_path / "out" / "followup1" / "mask.nii.gz", followup)
    assert dice(service_nifti, local_nifti) >= 0.9


def _save(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_the_job_ran_once_and_is_audited(finished, stack):
    job, _, _ = finished
    rec = record(stack.data_dir, job["id"])
    assert rec["attempts"] == 1 and rec["terminal_transitions"] == 1 and rec["writes"] == {"followup1": 1}
    actions = {(e["action"], e["key"]) for e in stack_audit(stack) if e.get("job_id") == job["id"]}
    assert {("job.submit", "planning-system"), ("job.read", "planning-system"), ("results.read", "planning-system"),
            ("artifact.download", "planning-system")} <= actions


def stack_audit(stack) -> list[dict]:
    import json

    return [json.loads(line) for line in (stack.data_dir / "audit.log").read_text().splitlines()]

